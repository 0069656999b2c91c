"""The whole graph of one forward pass: the non-GEMM work and which layers reach the output.

``GraphRecorder`` watches every aten op of a forward pass (a ``TorchDispatchMode``, so it sees
user code, functional calls and tensor methods alike) and every module call (forward pre and
post hooks). An op that runs inside a traced layer (a Conv2d, Linear or pooling module, or the
attention matmuls and softmax of a token block) belongs to that layer, whose LayerSpec already
costs it; every other op is classified (elementwise, activation, norm, concat, copy, pooling)
with the bytes it reads and writes (float32, batch 1). Views cost nothing and pass their
producer through, so the recorder also builds the dataflow graph: each tensor's producer and
each op's inputs. Liveness: an op or layer is dead when none of its outputs reaches a model
output (a walk backward from the outputs), or when it computes a constant: no value of the
inputs of its enclosing block (a module with a non-leaf child, or the model; the outputs of
the blocks it contains count as inputs too) reaches it, e.g. a conv applied to
``zeros_like(x)``. Creation ops (``zeros_like``...) read only a shape, so
they keep their argument alive but pass none of its values on. Together this is the
NAS-Bench-201 notion of a dead edge, "not on an input→output path of its cell": a cell edge
whose source node no input value reaches or whose target node reaches no output. Dead work
still runs in eager runtimes, so it is still costed; it is only marked.

The recorded ops are folded into a few LayerSpecs of kind ``elementwise``: one per (module
that ran the op, op class, live or dead), where the module is the innermost running module
that has a non-leaf child (a block, a cell, the model), so inventories stay small: a few
entries per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from search_spaces import LayerKind, LayerSpec

#: Op classes of non-GEMM work, in the order the features list them.
OP_CLASSES: tuple[str, ...] = ("elementwise", "activation", "norm", "concat", "copy", "pooling")

_ELEMENTWISE = {
    "add", "sub", "mul", "div", "rsub", "maximum", "minimum", "where", "pow", "neg", "abs",
    "exp", "log", "sqrt", "rsqrt", "reciprocal", "addcmul", "addcdiv", "lerp", "erf",
}  # fmt: skip
_ACTIVATION = {
    "relu", "relu6", "hardtanh", "gelu", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh",
    "_softmax", "softmax", "_log_softmax", "log_softmax", "leaky_relu", "elu", "mish", "clamp",
    "clamp_min", "clamp_max", "softplus", "prelu", "_prelu_kernel", "glu",
}  # fmt: skip
_NORM = {
    "native_batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
    "batch_norm", "native_layer_norm", "layer_norm", "native_group_norm", "group_norm",
    "instance_norm", "_fused_rms_norm", "rms_norm",
}  # fmt: skip
_BATCH_NORM = {
    "native_batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "batch_norm",
}
_CONCAT = {"cat", "stack", "concat"}
_COPY = {
    "clone", "_to_copy", "copy", "contiguous", "zeros_like", "ones_like", "full_like", "empty_like",
    "zero", "fill", "zeros", "ones", "full", "new_zeros", "new_ones", "new_full", "constant_pad_nd",
    "repeat", "index_select", "gather", "embedding",
}  # fmt: skip
_POOLING = {
    "avg_pool2d", "max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d",
    "_adaptive_avg_pool2d", "adaptive_max_pool2d", "mean", "sum", "amax", "amin",
    "avg_pool1d", "max_pool1d", "adaptive_avg_pool1d",
}  # fmt: skip
#: Ops whose values do not depend on their tensor arguments (only their shapes).
_CREATE = {
    "zeros_like", "ones_like", "full_like", "empty_like", "zeros", "ones", "full", "empty",
    "new_zeros", "new_ones", "new_full", "new_empty", "arange", "rand_like", "randn_like",
    "scalar_tensor", "fill", "zero",
}  # fmt: skip
#: Ops of a token block costed by its attention LayerSpec (QK^T, softmax, AV).
_ATTENTION = {
    "bmm", "baddbmm", "mm", "matmul", "_softmax", "softmax",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention", "scaled_dot_product_attention",
    "_scaled_dot_product_attention_math", "_scaled_dot_product_cudnn_attention",
}  # fmt: skip


def op_class(name: str) -> str | None:
    """The op class of an aten op (overload packet name, in-place ``_`` suffix allowed), or None
    for ops that move no data of their own (views, shape queries) or that are not classified."""
    base = name[:-1] if name.endswith("_") and not name.startswith("_") else name
    for cls, names in (
        ("elementwise", _ELEMENTWISE),
        ("activation", _ACTIVATION),
        ("norm", _NORM),
        ("concat", _CONCAT),
        ("copy", _COPY),
        ("pooling", _POOLING),
    ):
        if base in names:
            return cls
    return None


@dataclass
class _Node:
    """One op or one traced layer call of the dataflow graph."""

    owner: str  # layer name (traced layer) or the module that ran a graph op
    layer: bool  # a traced layer call (its ops merged) rather than a graph op
    op: str = ""
    op_class: str | None = None
    bytes: float = 0.0
    deps: set[int] = field(default_factory=set)
    fed: bool = False  # some value it reads depends on the inputs of its enclosing block


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _bytes(t: torch.Tensor) -> float:
    # Float32 whatever the dtype the model runs in (the priors cost float32 activations).
    return 4.0 * t.numel()


class GraphRecorder(TorchDispatchMode):
    """Record the dataflow of one forward pass; enter it around the forward (``with recorder:``).

    ``layers`` maps each traced module to its inventory name; ``blocks`` names the token blocks
    whose attention ops belong to their attention LayerSpec.
    """

    def __init__(self, model: nn.Module, layers: dict[nn.Module, str], blocks: dict[nn.Module, str]) -> None:
        super().__init__()
        self.nodes: list[_Node] = []
        self._producer: dict[int, int] = {}
        self._sources: set[int] = set()
        self._keep: list[torch.Tensor] = []  # holds every seen tensor so ids are never reused
        self._stack: list[tuple[nn.Module, str]] = []  # running modules, outermost first
        self._layer_node: list[int | None] = []  # the node of the running traced layer, per depth
        self._layers = layers
        self._blocks = blocks
        self._names = {m: n for n, m in model.named_modules()}
        self._root = model
        # Modules whose children are all leaves (a ReLU-conv-BN Sequential, a ReLU) are too
        # small to name an entry: their ops go to the first enclosing module with more depth.
        self._flat = {
            m for m in self._names if all(not any(True for _ in c.children()) for c in m.children())
        }
        self._handles: list[Any] = []
        for module in self._names:
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post))

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---- module stack ---------------------------------------------------------------------
    def _pre(self, module: nn.Module, args: Any) -> None:
        self._stack.append((module, self._names.get(module, "")))
        if module not in self._flat or module is self._root:
            # A block's inputs are where data enters it: ops that no value from them reaches
            # compute constants (e.g. a conv on a NAS-Bench-201 cell's zero node).
            for t in _tensors(args):
                self._keep.append(t)
                self._sources.add(id(t))
        node: int | None = None
        if module in self._layers:
            node = len(self.nodes)
            self.nodes.append(_Node(owner=self._layers[module], layer=True))
        self._layer_node.append(node)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if module not in self._flat:
            # ...and its outputs are where data leaves it: constancy is judged within a block,
            # so a block computing a constant does not make everything after it dead.
            for t in _tensors(output):
                self._keep.append(t)
                self._sources.add(id(t))
        if self._stack and self._stack[-1][0] is module:
            self._stack.pop()
            self._layer_node.pop()

    def _owner(self, name: str) -> int | None:
        """The traced-layer node that owns an op of this name, or None for a graph op."""
        for depth in range(len(self._stack) - 1, -1, -1):
            module = self._stack[depth][0]
            node = self._layer_node[depth]
            if node is None:
                continue
            if module in self._blocks:
                return node if name in _ATTENTION else None
            return node  # a Conv2d/Linear/pooling layer owns everything it runs
        return None

    def _module_name(self) -> str:
        for module, name in reversed(self._stack):
            if module not in self._flat:
                return name
        return ""

    # ---- ops ------------------------------------------------------------------------------
    def _dep(self, t: torch.Tensor) -> int | None:
        return self._producer.get(id(t))

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        inputs = _tensors((args, kwargs))
        outputs = _tensors(out)
        deps = {d for t in inputs if (d := self._dep(t)) is not None}
        base = name[:-1] if name.endswith("_") and not name.startswith("_") else name
        # A creation op reads only its argument's shape: it still needs that tensor to exist
        # (deps, for liveness) but carries none of its values (fed).
        fed = base not in _CREATE and (
            any(id(t) in self._sources for t in inputs) or any(self.nodes[d].fed for d in deps)
        )
        owner = self._owner(name)
        cls = op_class(name)
        if owner is not None:
            node = owner
            self.nodes[node].deps.update(deps)
            self.nodes[node].fed |= fed
        elif cls is None:
            # Views and unclassified ops: free, but dataflow passes through them.
            if not deps and not outputs:
                return out
            node = len(self.nodes)
            self.nodes.append(_Node(owner=self._module_name(), layer=False, op=name, deps=deps, fed=fed))
        else:
            if cls == "norm" and name.rstrip("_") in _BATCH_NORM and self._after_gemm(inputs):
                cls = None  # inference batch norm right after a conv/linear folds into it
            node = len(self.nodes)
            # A creation op writes its output only; others read their tensor operands too.
            read = [] if base in _CREATE else inputs
            moved = sum(_bytes(t) for t in read if t.dim() > 0 and not isinstance(t, nn.Parameter))
            moved += sum(_bytes(t) for t in outputs)
            self.nodes.append(
                _Node(
                    owner=self._module_name(),
                    layer=False,
                    op=name,
                    op_class=cls,
                    bytes=moved,
                    deps=deps,
                    fed=fed,
                )
            )
        for t in outputs:
            self._keep.append(t)
            self._producer[id(t)] = node
        self._keep.extend(inputs)
        return out

    def _after_gemm(self, inputs: list[torch.Tensor]) -> bool:
        if not inputs:
            return False
        d = self._dep(inputs[0])
        return d is not None and self.nodes[d].layer

    # ---- results --------------------------------------------------------------------------
    def live(self, output: Any) -> set[int]:
        """Live nodes: some output tensor is reached from them (backward walk from the outputs)
        and they read a value of their enclosing block's inputs (are not constants)."""
        stack = [d for t in _tensors(output) if (d := self._dep(t)) is not None]
        if not stack:
            # An output the recorder cannot see into (no tensor produced in the pass): call
            # everything live rather than everything dead.
            return {n for n, node in enumerate(self.nodes) if node.fed}
        seen: set[int] = set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(self.nodes[n].deps - seen)
        return {n for n in seen if self.nodes[n].fed}

    def dead_layers(self, output: Any) -> set[str]:
        """Names of traced layers none of whose calls reaches an output."""
        live = self.live(output)
        ran: set[str] = set()
        alive: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.layer:
                ran.add(node.owner)
                if i in live:
                    alive.add(node.owner)
        return ran - alive

    def specs(self, output: Any, taken: set[str]) -> list[LayerSpec]:
        """The recorded graph ops as ``elementwise`` LayerSpecs, one per (module, op class,
        liveness), in order of first appearance; names avoid those in ``taken``."""
        live = self.live(output)
        groups: dict[tuple[str, str, bool], dict[str, Any]] = {}
        for i, node in enumerate(self.nodes):
            if node.layer or node.op_class is None:
                continue
            key = (node.owner, node.op_class, i in live)
            entry = groups.setdefault(key, {"count": 0, "bytes": 0.0, "ops": {}})
            entry["count"] += 1
            entry["bytes"] += node.bytes
            entry["ops"][node.op] = entry["ops"].get(node.op, 0) + 1
        out: list[LayerSpec] = []
        for (owner, cls, is_live), entry in groups.items():
            name = f"{owner or 'model'}:{cls}" + ("" if is_live else ":dead")
            while name in taken:
                name += "_"
            taken.add(name)
            out.append(
                LayerSpec(
                    name=name,
                    kind=LayerKind.ELEMENTWISE,
                    extra={
                        "op_class": cls,
                        "count": entry["count"],
                        "bytes": entry["bytes"],
                        "ops": dict(sorted(entry["ops"].items())),
                        "live": is_live,
                    },
                )
            )
        return out
