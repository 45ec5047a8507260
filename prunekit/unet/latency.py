"""Where the latency table's measurement lived when it was U-Net only: it is :mod:`prunekit.latency`
now (any prunable denoiser); these names stay importable from here for code written against it."""

from prunekit.latency import (
    DTYPES,
    INTERPOLATIONS,
    TABLE_FORMAT,
    TABLE_VERSION,
    LatencyModel,
    LatencyTable,
    LatencyTableError,
    LayerCurve,
    block_of,
    check_uniform,
    config_hash,
    fit_scale,
    forward_inputs,
    interleaved_ratio,
    node_widths,
    profile_latency,
    unet_config_hash,
    uniform_mask,
)

__all__ = ["DTYPES", "INTERPOLATIONS", "TABLE_FORMAT", "TABLE_VERSION", "LatencyModel", "LatencyTable",
           "LatencyTableError", "LayerCurve", "block_of", "check_uniform", "config_hash", "fit_scale",
           "forward_inputs", "interleaved_ratio", "node_widths", "profile_latency", "uniform_mask",
           "unet_config_hash"]
