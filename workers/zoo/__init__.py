"""The model zoo: real models hwsearch can compress, each with an honest quality evaluator.

A new model is one new module with a ``@register_model`` ZooModel subclass, imported here;
tests/test_zoo_contract.py runs the contract on every registered entry.
"""

from __future__ import annotations

from . import digits, efficientnet_lite0, fbnet, minilm, mobilenet_v2, nasbench201
from ._base import (
    CalibrationSet,
    Quality,
    ZooError,
    ZooModel,
    create_model,
    list_models,
    model_class,
    register_model,
)
from ._prepare import Prepared, prepare
from ._sources import (
    MODULES_SETTING,
    PLUGIN_GROUP,
    ModelSource,
    UserModel,
    list_model_sources,
    model_source,
    resolve_model,
)

__all__ = [
    "MODULES_SETTING",
    "PLUGIN_GROUP",
    "CalibrationSet",
    "ModelSource",
    "Prepared",
    "Quality",
    "UserModel",
    "ZooError",
    "ZooModel",
    "create_model",
    "digits",
    "efficientnet_lite0",
    "fbnet",
    "list_model_sources",
    "list_models",
    "minilm",
    "mobilenet_v2",
    "model_class",
    "model_source",
    "nasbench201",
    "prepare",
    "register_model",
    "resolve_model",
]
