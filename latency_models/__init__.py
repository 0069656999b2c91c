"""Latency and resource models of targets (GPU, mobile, FPGA, CPU). No torch.

Today: a registry of documented targets (``targets/*.json``, or a user's JSON/YAML file),
one analytic prior per family (roofline for GPU/CPU/mobile; an N3H-Core-style DSP + LUT
GEMM accelerator for FPGA boards), and ``predict`` on ``search_spaces`` LayerSpecs and
Plans, every number labelled with its provenance; learned predictors fitted on per-network
or per-layer measurement tables, their validation report and a versioned catalogue.
"""

from __future__ import annotations

from ._batch import BatchPredictor
from ._catalogue import Catalogue, catalogue, data_dir
from ._coster import Coster, learned_provenance
from ._errors import LatencyModelError
from ._family import (
    FpgaFamily,
    PriorEstimate,
    RooflineFamily,
    TargetFamily,
    create_family,
    list_families,
    register_family,
)
from ._features import FEATURE_NAMES, layer_features, network_features
from ._gemm import Gemms, plan_gemms
from ._measurements import (
    LayerMeasurement,
    MeasurementError,
    NetworkMeasurement,
    TooManyRows,
    check_measurements,
    measurement_format,
    read_layer_measurements,
    read_network_measurements,
)
from ._predict import ANALYTIC, CostPrediction, predict, predict_latency_ms
from ._predictor import (
    BoostedResidual,
    CalibratedPrior,
    Predictor,
    ScaledPrior,
    create_predictor,
    list_predictors,
    load_predictor,
    register_predictor,
)
from ._probe import (
    RuntimeTiming,
    interleaved_timing,
    measure_runtime_target,
    ort_session,
    runtime_target,
)
from ._report import Metrics, metrics, proxy_baselines
from ._select import AUTO, Selection, auto_kinds, select_predictor
from ._target import (
    FAMILIES,
    HOST_TARGETS,
    RUNTIMES,
    FpgaResources,
    Target,
    get_target,
    list_targets,
    load_target_file,
    register_target,
)
from ._transfer import TransferPredictor, loo_transfer_spearman

__all__ = [
    "ANALYTIC",
    "AUTO",
    "FAMILIES",
    "FEATURE_NAMES",
    "HOST_TARGETS",
    "RUNTIMES",
    "BatchPredictor",
    "BoostedResidual",
    "CalibratedPrior",
    "Catalogue",
    "CostPrediction",
    "Coster",
    "FpgaFamily",
    "FpgaResources",
    "Gemms",
    "LatencyModelError",
    "LayerMeasurement",
    "MeasurementError",
    "Metrics",
    "NetworkMeasurement",
    "Predictor",
    "PriorEstimate",
    "RooflineFamily",
    "RuntimeTiming",
    "ScaledPrior",
    "Selection",
    "Target",
    "TargetFamily",
    "TooManyRows",
    "TransferPredictor",
    "auto_kinds",
    "catalogue",
    "check_measurements",
    "create_family",
    "create_predictor",
    "data_dir",
    "get_target",
    "interleaved_timing",
    "layer_features",
    "learned_provenance",
    "list_families",
    "list_predictors",
    "list_targets",
    "load_predictor",
    "load_target_file",
    "loo_transfer_spearman",
    "measure_runtime_target",
    "measurement_format",
    "metrics",
    "network_features",
    "ort_session",
    "plan_gemms",
    "predict",
    "predict_latency_ms",
    "proxy_baselines",
    "read_layer_measurements",
    "read_network_measurements",
    "register_family",
    "register_predictor",
    "register_target",
    "runtime_target",
    "select_predictor",
]
