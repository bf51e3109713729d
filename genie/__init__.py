"""genie: zero-shot quantization of CNNs (GENIE, CVPR 2023)."""
__version__ = "0.1.0"
