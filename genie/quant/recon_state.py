"""What a reconstruction shares between the solver (:mod:`genie.quant.reconstruction`) and the
unit trainer (:mod:`genie.quant.unit_trainer`): the settings (:class:`ReconConfig`), what the
reconstruction of every unit shares (:class:`ReconRun`) and one unit with what it is trained on
(:class:`ReconUnit`). A leaf below both, so neither imports the other for these types."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..events import Callback
from ..validate import (COUNT, COUNT_OR_ZERO, FRACTION_BELOW_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED,
                        check_bool, check_choice, check_float, check_int)
from .blocks import QuantBlock
from .capture import TeacherActivations
from .step_size import ACT_SEARCH_SAMPLE

ROUND_WEIGHT_GENIE = 1.0  # lambda of Eq. 15 for GENIE-M (method card)
ROUND_WEIGHT_ADAROUND = 0.1  # lambda for the AdaRound baseline: the paper's (Sec. 4.1; BRECQ's code uses 0.01)
QDROP_INPUTS = ("qdrop", "reference")  # ReconConfig.qdrop_input


@dataclass
class ReconConfig:
    """Reconstruction hyper-parameters (defaults: method card / paper appendix A)."""

    iters: int = 20000
    batch_size: int = 32
    drop_prob: float = 0.5  # QDrop: probability an activation element stays FP (0 disables)
    # QDrop at a unit's input. "qdrop": one mask per element picks the FP input or the quantized
    # student input (QDrop's scheme). "reference": the FP and student inputs are mixed first, then
    # the unit's input quantizer drops again with its own mask, so a quarter of the elements
    # pass as the student's unquantized input (what the authors' code does).
    qdrop_input: str = "reference"
    lr_softbits: float = 1e-3
    lr_weight_scale: float = 1e-4
    lr_act_scale: float = 4e-5
    round_weight: Optional[float] = None  # lambda of Eq. 15; None: ROUND_WEIGHT_GENIE or ROUND_WEIGHT_ADAROUND
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2  # fraction of iterations without the rounding regulariser
    min_scale_ratio: float = 0.1  # learned step sizes are kept >= this fraction of their initial value
    seed: int = 0
    chunk_size: Optional[int] = None  # images per forward when caching unit inputs
    capture_mb: int = 2048  # teacher activations captured in one forward pass (genie.quant.capture)
    act_search_sample: Optional[int] = ACT_SEARCH_SAMPLE  # values ranking step sizes first; None: exhaustive
    guard_ties: bool = True  # move trained activation steps off populated rounding ties (genie.quant.rounding_ties)

    def rounding_weight(self, method: str) -> float:
        """lambda of Eq. 15 for weight quantizer ``method``: ``round_weight``, or by default
        :data:`ROUND_WEIGHT_GENIE` for genie and :data:`ROUND_WEIGHT_ADAROUND` otherwise."""
        if self.round_weight is not None:
            return self.round_weight
        return ROUND_WEIGHT_GENIE if method == "genie" else ROUND_WEIGHT_ADAROUND

    def validate(self) -> "ReconConfig":
        """Every setting checked against its range (:mod:`genie.validate`; the seed against what
        torch's generators take); numpy numbers become Python ones. Returns ``self``."""
        self.iters = check_int(self.iters, "reconstruction iterations (iters)", COUNT_OR_ZERO)
        self.batch_size = check_int(self.batch_size, "batch_size", COUNT)
        self.drop_prob = check_float(self.drop_prob, "drop_prob", PROBABILITY)
        self.qdrop_input = check_choice(self.qdrop_input, "qdrop_input", QDROP_INPUTS)
        self.round_weight = check_float(self.round_weight, "round_weight (lambda of Eq. 15)", NON_NEGATIVE,
                                        or_none=" or None (the quantizer's default)")
        for name in ("lr_softbits", "lr_weight_scale", "lr_act_scale"):
            setattr(self, name, check_float(getattr(self, name), name, NON_NEGATIVE))
        self.beta_start = check_float(self.beta_start, "beta_start", POSITIVE)
        self.beta_end = check_float(self.beta_end, "beta_end", POSITIVE)
        self.warmup = check_float(self.warmup, "warmup", FRACTION_BELOW_ONE)
        self.min_scale_ratio = check_float(self.min_scale_ratio, "min_scale_ratio", PROBABILITY,
                                           or_none=" or None (no floor)")
        self.seed = check_int(self.seed, "seed", SEED)
        self.chunk_size = check_int(self.chunk_size, "chunk_size", COUNT, or_none=" or None (automatic)")
        self.capture_mb = check_int(self.capture_mb, "capture_mb (MiB)", COUNT_OR_ZERO)
        self.act_search_sample = check_int(self.act_search_sample, "act_search_sample", COUNT,
                                           or_none=" or None (exhaustive)")
        self.guard_ties = check_bool(self.guard_ties, "guard_ties")
        return self


@dataclass
class ReconRun:
    """What the reconstruction of every unit shares."""

    teacher: nn.Module  # the FP model (BN folded like the student): unit inputs and targets
    student: nn.Module  # the quantized network (QuantizedModel.net)
    images: torch.Tensor  # the calibration images (N, C, H, W), on the device
    cfg: ReconConfig
    method: str  # the weight quantizer (genie also learns the weight step sizes)
    p_norm: float  # norm of the activation step-size search (Eq. 16)
    generator: torch.Generator  # batch indices; QDrop masks on CPUs
    search_generator: torch.Generator  # the values that rank activation step sizes
    chunk: int  # images per forward when capturing inputs and measuring errors
    fp: TeacherActivations  # the teacher's inputs and outputs of the units
    chained: list  # chained[k]: unit k's input is unit k-1's output (genie.quant.capture)
    callback: Callback
    bar: object  # a tqdm bar (or None): advanced as iterations finish
    report_every: int  # iterations between UnitProgress events (and finiteness checks)
    cuda_graph: bool  # replay the training step as a CUDA graph (GPU only)


@dataclass
class ReconUnit:
    """One reconstruction unit and what it is trained on (each tensor ``(N, ...)``)."""

    index: int
    name: str
    module: nn.Module
    fp_in: torch.Tensor  # the teacher's input of the unit: QDrop's FP source
    q_in: torch.Tensor  # the quantized model's input of the unit (units before it quantized)
    fp_out: torch.Tensor  # the teacher's output of the unit: the target

    @property
    def kind(self) -> str:
        """The FP block's type name, or ``"conv layer"`` / ``"linear layer"``."""
        m = self.module
        return m.source_type if isinstance(m, QuantBlock) else f"{m.kind} layer"
