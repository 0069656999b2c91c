"""Latency and resource models of targets (GPU, mobile, FPGA, host CPU). No torch.

Filled in by the latency-model issue: targets, analytic priors, learned predictors, and
vectorised batch prediction on LayerSpec + Choice from ``search_spaces``.
"""
