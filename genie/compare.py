"""Paired comparison of two classifiers on the same test images.

Two quantized models evaluated on one test file differ on a few hundred images each way; their
top-1 gap is the difference of those two counts. McNemar's exact test asks whether that split is
more lopsided than a fair coin would make it: with ``only_a`` images that only model A gets right
and ``only_b`` that only B gets right, the two-sided p-value is the binomial(only_a + only_b,
1/2) probability of a split at least as uneven. A small p (say < 0.05) says the gap is more than
what the particular draw of discordant images explains; a large one says this test file cannot
tell the two models apart. It says nothing about other seeds or calibration sets.

With the FP32 model's predicted classes in place of the labels, :func:`paired_top1` compares the
models' *agreement with FP32* instead: which quantized model stays closer to the network it
approximates, on images neither was calibrated on. :func:`logit_distance` measures the same
closeness on the outputs themselves.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import GenieError


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for ``only_a`` vs ``only_b`` discordant images (1.0 when
    there are none)."""
    if only_a < 0 or only_b < 0:
        raise GenieError(f"discordant counts must be >= 0, got {only_a} and {only_b}")
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    # sum of binomial(n, i) / 2^n for i <= k, doubled; exact integers, then one division
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_top1(pred_a: torch.Tensor, pred_b: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 (%) of two models' predicted classes ``(N,)`` against ``labels`` ``(N,)``, how many
    predictions differ, the discordant counts and McNemar's exact p-value."""
    if not (pred_a.shape == pred_b.shape == labels.shape) or labels.dim() != 1 or len(labels) == 0:
        raise GenieError(f"paired_top1 needs two prediction vectors and the labels, all (N,) with N > 0; "
                         f"got {tuple(pred_a.shape)}, {tuple(pred_b.shape)}, {tuple(labels.shape)}")
    right_a, right_b = pred_a == labels, pred_b == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    n = len(labels)
    return {
        "top1_a": 100.0 * int(right_a.sum()) / n,
        "top1_b": 100.0 * int(right_b.sum()) / n,
        "images": n,
        "predictions_differ": int((pred_a != pred_b).sum()),
        "only_a_right": only_a,
        "only_b_right": only_b,
        "p_value": mcnemar_exact(only_a, only_b),
    }


def logit_distance(logits: torch.Tensor, reference: torch.Tensor) -> dict:
    """How far a model's outputs ``(N, classes)`` are from a reference model's on the same images:
    ``logit_mse``, the squared error summed over classes and averaged over images, and ``kl``,
    KL(softmax(reference) || softmax(logits)) averaged over images (nats)."""
    if logits.shape != reference.shape or logits.dim() != 2 or len(logits) == 0:
        raise GenieError(f"logit_distance needs two (N, classes) tensors of one shape with N > 0; got "
                         f"{tuple(logits.shape)} and {tuple(reference.shape)}")
    logits, reference = logits.double(), reference.double()
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    return {"logit_mse": float((logits - reference).pow(2).sum(1).mean()), "kl": float(kl)}
