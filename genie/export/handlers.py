"""Translation tables from the traced quantized network to ONNX operators.

Three tables, each ``{key: handler}``: :data:`MODULE_HANDLERS` by module type (exact type:
torch.fx keeps only torch.nn modules and genie's quantizers as leaves),
:data:`FUNCTION_HANDLERS` by function, :data:`METHOD_HANDLERS` by tensor method name. A handler
takes ``(ctx, node, [module,] *args, **kwargs)`` where tensor arguments are ONNX tensor names,
and returns the name of the tensor it computed (or a shape value, see
:class:`genie.export.context.Dim`). Anything missing from the tables is refused by the exporter
with the operator's and the module's name. Handlers live in :mod:`.quant_ops` (genie's
quantizers) and :mod:`.float_ops` (everything else).
"""
from __future__ import annotations

from .float_ops import FLOAT_FUNCTION_HANDLERS, FLOAT_METHOD_HANDLERS, FLOAT_MODULE_HANDLERS
from .quant_ops import QUANT_MODULE_HANDLERS

MODULE_HANDLERS = {**QUANT_MODULE_HANDLERS, **FLOAT_MODULE_HANDLERS}
FUNCTION_HANDLERS = dict(FLOAT_FUNCTION_HANDLERS)
METHOD_HANDLERS = dict(FLOAT_METHOD_HANDLERS)
