"""GENIE-D: data distillation from BatchNorm statistics, with swing convolution."""
from .bns import BNStatsLoss, bns_loss, input_stats_loss
from .dataset import DistilledSet, load_distilled
from .distiller import DISTILLERS, DistillConfig, distill, model_fingerprint
from .generator import StackedGenerator
from .schedule import snapshot_schedule
from .swing import SwingControl, SwingConv2d, apply_swing, set_swing, swing_crop

__all__ = [
    "BNStatsLoss",
    "DISTILLERS",
    "DistillConfig",
    "DistilledSet",
    "StackedGenerator",
    "SwingControl",
    "SwingConv2d",
    "apply_swing",
    "bns_loss",
    "distill",
    "input_stats_loss",
    "load_distilled",
    "model_fingerprint",
    "set_swing",
    "snapshot_schedule",
    "swing_crop",
]
