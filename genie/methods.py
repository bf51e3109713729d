"""The paper's method list, written once: Table 2 (the ablation M1 to M5).

Each method is the calibration-data distiller (:data:`genie.distill.DISTILLERS`), whether swing
convolution is on during distillation, and the weight quantizer of the reconstruction
(:data:`genie.quant.weight_quantizer.WEIGHT_METHODS`):

====  ==================================  =====  ==========================================
M1    ``direct`` (ZeroQ-style pixels)     no     ``adaround`` (step size frozen)
M2    ``direct``                          yes    ``adaround``
M3    ``genie`` (generator + latents)     no     ``adaround``
M4    ``genie``                           yes    ``adaround``
M5    ``genie``                           yes    ``genie`` (GENIE-M: step size learned too)
====  ==================================  =====  ==========================================

The settings are keyword arguments of :class:`genie.pipeline.RunConfig`:
``RunConfig(**TABLE2["M5"], w_bits=2, a_bits=4)``, or ``{**TABLE2["M1"], "distill_iters": 500}``.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

TABLE2: Mapping[str, Mapping[str, object]] = MappingProxyType({
    name: MappingProxyType(dict(distiller=distiller, swing=swing, quantizer=quantizer))
    for name, distiller, swing, quantizer in (
        ("M1", "direct", False, "adaround"),
        ("M2", "direct", True, "adaround"),
        ("M3", "genie", False, "adaround"),
        ("M4", "genie", True, "adaround"),
        ("M5", "genie", True, "genie"),
    )
})
"""``{method: {"distiller": str, "swing": bool, "quantizer": str}}`` in table order (read-only)."""


def cli_flags(method: str) -> str:
    """The ``python -m genie run`` options of a Table 2 method, e.g. for ``"M1"``:
    ``--distiller direct --no-swing --quantizer adaround``."""
    m = TABLE2[method]
    return f"--distiller {m['distiller']} {'--swing' if m['swing'] else '--no-swing'} --quantizer {m['quantizer']}"


def sweep_case(method: str) -> str:
    """The ``python -m genie.sweep --case`` value of a Table 2 method, e.g. for ``"M1"``:
    ``M1:distiller=direct,swing=False,quantizer=adaround``."""
    return f"{method}:" + ",".join(f"{key}={value}" for key, value in TABLE2[method].items())
