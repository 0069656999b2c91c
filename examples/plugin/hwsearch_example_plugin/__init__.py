"""An example hwsearch model plugin (the entry point ``example-resnet`` in ``hwsearch.models``).

``hwsearch_example_plugin.model`` holds the network, its zoo entry and the module-level hooks an
import path uses; ``hwsearch_example_plugin.data`` the data split (numpy and scikit-learn only,
so ``make_dataset.py`` runs without torch). This module imports neither, so listing plugins
stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
