"""TargetFamily: the analytic prior of one family of hardware, and the registry by family name."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from search_spaces import Registry

from ._errors import LatencyModelError
from ._gemm import GRAPH_CLASSES, Gemms, GraphWork
from ._target import Target

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PriorEstimate:
    """Per-GEMM latency (ms) and, for FPGA targets, the accelerator's resource use."""

    latency_ms: Array
    dsp: int | None = None
    lut: int | None = None
    bram36: int | None = None


class TargetFamily(abc.ABC):
    """The analytic cost model of a family of targets.

    Contract (tests/test_latency_priors.py runs it on every registered family and target):
    ``estimate(target, gemms)`` returns one non-negative latency per GEMM, vectorised over
    the GEMM arrays, and is monotone: more MACs, more bytes or wider operands never cost
    less. It is a prior: uncalibrated, labelled ``analytic (uncalibrated)`` wherever shown.
    """

    name: str

    @abc.abstractmethod
    def estimate(self, target: Target, gemms: Gemms) -> PriorEstimate: ...

    def estimate_graph(self, target: Target, work: GraphWork) -> Array:
        """Latency (ms) of each non-GEMM entry (pooling, adds, activations...): a memory
        roofline, its bytes at the memory bandwidth, plus the target's dispatch overhead once
        per op the entry folds. These ops do next to no arithmetic per byte, so bandwidth
        bounds them on every family that does not override this."""
        return np.asarray(
            work.bytes / (target.memory_bandwidth_gb_s * 1e9) * 1e3
            + work.count * target.dispatch_overhead_ms,
            dtype=np.float64,
        )


def _operand_bits(gemms: Gemms) -> Array:
    return np.maximum(gemms.wbits, gemms.abits)


class RooflineFamily(TargetFamily):
    """GPU, CPU and mobile: max(compute at the precision's peak, bytes at memory bandwidth) + dispatch.

    Compute runs at the peak of the narrowest native width that holds both operands (e.g.
    int4 weights with int8 activations run at the int8 peak; 6-bit at 8-bit). Bytes are the
    weights at their bits, the input activations at their bits and the float32 outputs.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def estimate(self, target: Target, gemms: Gemms) -> PriorEstimate:
        bits = _operand_bits(gemms)
        widths = np.array(sorted(target.peak_macs_per_s), dtype=np.float64)
        peaks = np.array([target.peak_macs_per_s[int(w)] for w in widths], dtype=np.float64)
        # Next wider native width (the widest if none is wider).
        idx = np.minimum(np.searchsorted(widths, bits, side="left"), len(widths) - 1)
        # A narrower native width never has a lower peak than a wider one: enforce that, so a
        # target file with odd numbers still gives a monotone model.
        peaks = np.maximum.accumulate(peaks[::-1])[::-1]
        compute_s = gemms.macs / (peaks[idx] * target.compute_efficiency)
        memory_s = (gemms.weight_bytes + gemms.in_bytes + gemms.out_bytes) / (
            target.memory_bandwidth_gb_s * 1e9
        )
        latency_ms = np.maximum(compute_s, memory_s) * 1e3 + target.dispatch_overhead_ms
        return PriorEstimate(latency_ms=latency_ms)


def lut_per_mac(wbits: Array, abits: Array) -> Array:
    """LUTs of one b_w × b_a multiplier plus its accumulator: ~b_w·b_a + 2(b_w + b_a).

    A b×b array multiplier grows with b² (N3H-Core's LUT core); 8×8 → 96, 4×4 → 32, 2×2 → 12.
    """
    return wbits * abits + 2.0 * (wbits + abits)


def dsp_macs_per_cycle(bits: Array) -> Array:
    """MACs one DSP slice does per cycle: 4 at ≤4 bits, 2 at ≤8 (Xilinx WP486/WP521 packing),
    1 at ≤16, 1/3 at 32 (a float32 multiply-add takes about three DSP slices)."""
    return np.where(bits <= 4, 4.0, np.where(bits <= 8, 2.0, np.where(bits <= 16, 1.0, 1.0 / 3.0)))


class FpgaFamily(TargetFamily):
    """A GEMM accelerator with a DSP core and a LUT core sharing each layer (the N3H-Core design).

    The DSP core is a Pk × Pn_dsp array (Pk = 16 along K) using 90% of the DSPs; the LUT core
    spends 50% of the LUTs on b_w×b_a multipliers, also 16 wide along K. Each GEMM's output
    channels N are split between the cores in proportion to their columns, so a layer takes
    ``G · M · ceil(K / Pk) · ceil(N / (Pn_dsp + Pn_lut))`` cycles at the board clock,
    overlapped with its DDR traffic, plus a per-layer overhead. The accelerator is fixed for
    the network: resource use is the maximum over its GEMMs; on-chip buffers (one Pk × Pn
    weight tile, double-buffered input and output rows) are counted in BRAM36 blocks.
    """

    name = "fpga"
    pk = 16
    dsp_fraction = 0.9
    lut_fraction = 0.5

    def estimate(self, target: Target, gemms: Gemms) -> PriorEstimate:
        if target.fpga is None:
            raise LatencyModelError(
                f"target[{target.name!r}].fpga", None, "an FPGA target needs its resources"
            )
        fpga = target.fpga
        bits = _operand_bits(gemms)
        dsp_cols = np.floor(fpga.dsp * self.dsp_fraction * dsp_macs_per_cycle(bits) / self.pk)
        lut_cols = np.where(
            bits <= 16,
            np.floor(fpga.lut * self.lut_fraction / lut_per_mac(gemms.wbits, gemms.abits) / self.pk),
            0.0,
        )
        cols = np.maximum(1.0, dsp_cols + lut_cols)
        cycles = gemms.groups * gemms.m * np.ceil(gemms.k / self.pk) * np.ceil(gemms.n / cols)
        compute_s = cycles / (fpga.clock_mhz * 1e6) / target.compute_efficiency
        memory_s = (gemms.weight_bytes + gemms.in_bytes + gemms.out_bytes) / (
            target.memory_bandwidth_gb_s * 1e9
        )
        latency_ms = np.maximum(compute_s, memory_s) * 1e3 + target.dispatch_overhead_ms
        if len(gemms) == 0:
            return PriorEstimate(latency_ms=latency_ms, dsp=0, lut=0, bram36=0)
        used_dsp_cols = np.minimum(dsp_cols, np.ceil(gemms.n))
        dsp = int(np.max(np.ceil(used_dsp_cols * self.pk / dsp_macs_per_cycle(bits))))
        used_lut_cols = np.minimum(lut_cols, np.maximum(0.0, np.ceil(gemms.n) - used_dsp_cols))
        lut = int(np.max(used_lut_cols * self.pk * lut_per_mac(gemms.wbits, gemms.abits)))
        tile_bits = (
            self.pk * cols * gemms.wbits  # weight tile
            + 2 * gemms.k * gemms.abits  # double-buffered input row
            + 2 * np.minimum(cols, gemms.n) * 32  # double-buffered output partial sums
        )
        bram = int(np.max(np.ceil(tile_bits / 36864.0)))
        return PriorEstimate(latency_ms=latency_ms, dsp=dsp, lut=lut, bram36=bram)

    def estimate_graph(self, target: Target, work: GraphWork) -> Array:
        """Non-GEMM work on the accelerator. Activations run in the GEMM core's output stage as
        results stream out (N3H-Core applies ReLU there), so they cost nothing; adds,
        pooling, concatenation, copies and unfolded norms run on the fabric as separate
        streaming passes: DDR bytes at the memory bandwidth plus the per-layer overhead once
        per op, as a GEMM layer pays it."""
        fused = work.op_class == GRAPH_CLASSES.index("activation")
        return np.where(fused, 0.0, super().estimate_graph(target, work))


FAMILIES_REGISTRY: Registry[TargetFamily] = Registry("family", LatencyModelError)


def register_family(family: TargetFamily, *, replace: bool = False) -> TargetFamily:
    """Add a family under ``family.name``; a different one under a taken name needs ``replace``."""
    return FAMILIES_REGISTRY.register(family.name, family, replace=replace)


for _family in (RooflineFamily("gpu"), RooflineFamily("cpu"), RooflineFamily("mobile"), FpgaFamily()):
    register_family(_family)


def list_families(pattern: str = "*") -> list[str]:
    """Registered family names matching a glob pattern, sorted."""
    return FAMILIES_REGISTRY.list(pattern)


def create_family(name: str) -> TargetFamily:
    """The registered family ``name``; the error lists the valid names."""
    return FAMILIES_REGISTRY.get(name)
