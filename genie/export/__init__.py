"""Deployable models: a quantized model as an ONNX QDQ file that onnxruntime (or any runtime
with QuantizeLinear / DequantizeLinear support) runs with genie's predictions.

Needs the optional ``onnx`` package (and ``onnxruntime`` to run or check the file):
``pip install 'genie-zsq[export]'``. Importing this module does not import either.
"""
from .footprint import weight_footprint
from .onnx_export import ExportReport, build_onnx, check_output_path, export_onnx
from .qdq import INT_FORMS

__all__ = ["INT_FORMS", "ExportReport", "build_onnx", "check_output_path", "export_onnx", "weight_footprint"]
