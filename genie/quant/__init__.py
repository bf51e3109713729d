"""GENIE-M: quantizers, quantized-model builder, block reconstruction, save/load; mixed precision
(per-layer sensitivity and the exact bit allocation under a memory budget)."""
from .act_quantizer import ActQuantizer
from .blocks import BlockParts, QuantBlock, default_block_table, register_block
from .bn_fold import fold_batchnorm
from .layers import QuantLayer
from .qmodel import QuantConfig, QuantizedModel, prepare_fp_model, quantize_model
from .reconstruction import ReconConfig, ReconReport, reconstruct
from .step_size import search_act_scale, search_weight_scale
from .weight_quantizer import WeightQuantizer

__all__ = [
    "ActQuantizer",
    "BlockParts",
    "QuantBlock",
    "QuantConfig",
    "QuantLayer",
    "QuantizedModel",
    "ReconConfig",
    "ReconReport",
    "WeightQuantizer",
    "default_block_table",
    "fold_batchnorm",
    "prepare_fp_model",
    "quantize_model",
    "reconstruct",
    "register_block",
    "search_act_scale",
    "search_weight_scale",
]
from .serialize import load_quantized, save_quantized  # noqa: E402
from .sensitivity import SensitivityTable, measure_sensitivity  # noqa: E402
from .allocation import BitAllocation, allocate, pareto_front, uniform_allocation  # noqa: E402

__all__ += ["load_quantized", "save_quantized", "SensitivityTable", "measure_sensitivity", "BitAllocation",
            "allocate", "pareto_front", "uniform_allocation"]
