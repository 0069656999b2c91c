"""ZooModel: the extension point for models hwsearch can compress and evaluate."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from search_spaces import InputError, Registry


@dataclass(frozen=True)
class Quality:
    """One quality measurement: higher is better; accuracy-like values are fractions in [0, 1]."""

    value: float
    metric: str
    description: str
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationSet:
    """Model inputs a compressed model is calibrated on, never the data it is scored on.

    ``batches`` are inputs the model accepts as they are (``model(batch)``); ``n_inputs`` counts
    examples; ``description`` says where they come from (quality descriptions quote it);
    ``synthetic`` is True for inputs synthesised from the model's own statistics; ``labels``
    (class indices, one per row of the batches in order) when the data is labelled."""

    batches: list[torch.Tensor]
    n_inputs: int
    description: str
    synthetic: bool = False
    labels: torch.Tensor | None = None


class ZooError(InputError):
    """A zoo model that does not exist, bad model arguments, or a missing weight package."""


class ZooModel(abc.ABC):
    """A model of the zoo: how to build it, feed it and measure its quality.

    Contract (every entry runs tests/test_zoo_contract.py by being registered):
    - ``build()`` returns the model in eval mode with its real weights (or, for cost-only
      entries, ``has_weights = False``, a deterministic seeded initialisation). It never
      downloads anything: weights come from installed packages or a local cache, and a
      missing package raises ZooError naming what to install.
    - ``example_input()`` returns one batch-1 input the model accepts.
    - ``evaluate(model)`` runs ``model`` (compressed or not) on real data and returns a
      Quality whose ``metric`` is ``self.metric``; for the uncompressed model of a
      reference-based metric it returns the best value (e.g. agreement 1.0).
    - ``ignore_layers(model)`` names layers never to compress (default: none); the output
      layer is never pruned in any case.
    - ``calibration_set()`` returns inputs to calibrate compressed models on, disjoint from
      what ``evaluate`` scores (default: None, no data of its own; a model with BatchNorm is
      then calibrated on inputs synthesised from its statistics).
    - Class attributes ``name``, ``task``, ``metric`` and ``description`` document the entry;
      ``args`` lists the constructor's keyword arguments (e.g. ``arch``); an entry with
      arguments declares ``arg_pattern``, which every argument its parser accepts matches.
    """

    name: ClassVar[str]
    task: ClassVar[str]
    metric: ClassVar[str]
    description: ClassVar[str]
    has_weights: ClassVar[bool] = True
    args: ClassVar[tuple[str, ...]] = ()
    #: The regular expression the ``name:argument`` form's argument (``args[0]``) must fully
    #: match, or None for an entry without arguments. The service checks model ids against a
    #: torch-free copy (``ZOO_ARGUMENTS`` in workers/search/_spec.py, kept equal by a test) at submission.
    arg_pattern: ClassVar[str | None] = None

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(self.args))
        if unknown:
            raise ZooError(
                f"{self.name}.arguments", unknown, f"unknown arguments; it takes {list(self.args) or 'none'}"
            )
        self.kwargs = kwargs

    @property
    def model_id(self) -> str:
        """``name`` or ``name:value`` for single-argument entries (e.g. ``nasbench201:<arch>``)."""
        if not self.kwargs:
            return self.name
        return self.name + ":" + ",".join(str(v) for v in self.kwargs.values())

    @abc.abstractmethod
    def build(self) -> nn.Module: ...

    @abc.abstractmethod
    def example_input(self) -> torch.Tensor: ...

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> Quality: ...

    def ignore_layers(self, model: nn.Module) -> list[str]:
        return []

    def calibration_set(self) -> CalibrationSet | None:
        """Inputs to calibrate on, never overlapping the evaluation data (None: none of its own)."""
        return None


MODELS: Registry[type[ZooModel]] = Registry("model", ZooError)
M = TypeVar("M", bound=type[ZooModel])


def register_model(cls: M) -> M:
    """Class decorator: add a ZooModel subclass to the registry under ``cls.name``."""
    MODELS.register(cls.name, cls)
    return cls


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, sorted."""
    return MODELS.list(pattern)


def model_class(name: str) -> type[ZooModel]:
    """The registered class ``name``; the error lists the valid names."""
    return MODELS.get(name)


def create_model(model_id: str, **kwargs: Any) -> ZooModel:
    """Instantiate a zoo entry from ``name`` or ``name:argument`` (the entry's first argument).

    ``create_model("nasbench201:|nor_conv_3x3~0|+|...|")`` equals
    ``create_model("nasbench201", arch="|nor_conv_3x3~0|+|...|")``.
    """
    name, sep, arg = model_id.partition(":")
    cls = model_class(name)
    if sep:
        if not cls.args:
            raise ZooError("model", model_id, f"{name!r} takes no argument, but got {arg!r} after ':'")
        kwargs = {cls.args[0]: arg, **kwargs}
    return cls(**kwargs)


def device_of(model: nn.Module) -> torch.device:
    """The device a model's parameters (or buffers) live on; CPU for a model with neither."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")
