"""``python -m service.cli``: the ``hwsearch`` script without the installed entry point."""

from __future__ import annotations

from . import main

main()
