"""Mixed-precision bit allocation: one weight bit width per layer that minimises the summed
sensitivity (:class:`genie.quant.sensitivity.SensitivityTable`) under a weight-memory budget.

The problem is a multiple-choice knapsack (pick one option per layer; memory and cost add up).
It is solved **exactly** by dynamic programming over the Pareto front of partial allocations:
layer by layer, every allocation of the layers so far is extended by every candidate, and a
partial allocation is dropped when another uses no more memory at no more cost (any completion
of the dropped one is matched by the same completion of the other, since both quantities add).
What remains after the last layer is the whole front, budget -> best allocation, from which a
budget query picks the cheapest point that fits. An integer program would give the same optimum
for one budget but needs a solver dependency and one solve per budget; the front is what the
plots need anyway, and for a ResNet it holds a few thousand points.

Memory is packed weight memory: ``sum(params * bits)`` over every quantized layer, the fixed
ones (the setting's 8-bit first and last layer) included. A budget in bits per weight ``b``
means the memory of the uniform ``Wb`` model under the same setting:
``sum_fixed params * fixed bits + b * sum_free params``; so ``budget_bits=3`` is exactly the
uniform W3 model's memory. Scales, zero points and biases are the same for every allocation
and are not counted.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import GenieError, shown


@dataclass
class BitAllocation:
    """One bit width per quantized layer. ``bits``: ``{layer: bits}`` for every quantized layer
    (free and fixed) in the table's order; ``weight_bits``: packed weight memory in bits;
    ``predicted``: the summed sensitivity of the free layers; ``params``: weights in all
    quantized layers; ``weight_bytes``: packed weight memory in bytes, ``ceil(params * bits / 8)``
    per layer (as :func:`genie.export.weight_footprint` counts the ``packed`` form's weights);
    ``budget_bits``: the budget it was chosen under (bits per weight), if any."""

    bits: dict
    weight_bits: int
    weight_bytes: int
    predicted: float
    params: int
    budget_bits: Optional[float] = None

    @property
    def weight_bits_avg(self) -> float:
        """Average bits per quantized weight (fixed layers included)."""
        return self.weight_bits / self.params

    def summary(self) -> str:
        return (f"{self.weight_bytes} bytes of packed weights ({self.weight_bits_avg:.3f} bits per weight), "
                f"predicted loss {self.predicted:.4g}")


def weight_memory_bytes(params_bits) -> int:
    """``sum ceil(params * bits / 8)`` over ``(params, bits)`` pairs."""
    return sum(-(-int(p) * int(b) // 8) for p, b in params_bits)


def _allocation(table, choice, budget_bits=None) -> BitAllocation:
    chosen = {layer: (table.bits[j], p) for layer, j, p in zip(table.layers, choice, table.params)}
    chosen.update({layer: (b, p) for layer, (b, p) in table.fixed.items()})
    order = table.order or list(chosen)
    bits = {layer: chosen[layer][0] for layer in order}
    pairs = [(p, b) for b, p in chosen.values()]
    predicted = float(sum(table.scores[i][j] for i, j in enumerate(choice)))
    return BitAllocation(bits, sum(p * b for p, b in pairs), weight_memory_bytes(pairs), predicted,
                         sum(p for p, _ in pairs), budget_bits)


def _fixed_bits(table) -> int:
    return sum(b * p for b, p in table.fixed.values())


def budget_weight_bits(table, budget_bits: float) -> float:
    """The memory (bits) of the uniform ``W{budget_bits}`` model under the table's setting."""
    return _fixed_bits(table) + budget_bits * sum(table.params)


def uniform_allocation(table, bits: int) -> BitAllocation:
    """Every free layer at ``bits`` (one of the table's candidates)."""
    if bits not in table.bits:
        raise GenieError(f"{bits} bits is not a candidate of this table ({', '.join(map(str, table.bits))})")
    j = table.bits.index(bits)
    return _allocation(table, [j] * len(table.layers))


def pareto_front(table) -> list:
    """Every Pareto-optimal allocation of ``table``: :class:`BitAllocation` s in increasing
    memory and strictly decreasing predicted loss (module docstring: exact)."""
    params = np.asarray(table.params, dtype=np.int64)
    bits = np.asarray(table.bits, dtype=np.int64)
    scores = np.asarray(table.scores, dtype=np.float64).reshape(len(params), len(bits))
    mem = np.zeros(1, dtype=np.int64)
    cost = np.zeros(1, dtype=np.float64)
    back = []  # per layer: (index into the previous front, candidate index) of each point
    for i in range(len(params)):
        m = (mem[:, None] + params[i] * bits[None, :]).ravel()
        c = (cost[:, None] + scores[i][None, :]).ravel()
        order = np.lexsort((c, m))  # by memory, then cost
        m, c = m[order], c[order]
        best_before = np.minimum.accumulate(c)
        keep = np.empty(len(c), dtype=bool)
        keep[0] = True
        keep[1:] = c[1:] < best_before[:-1]  # strictly cheaper than every point of no more memory
        order = order[keep]
        back.append((order // len(bits), order % len(bits)))
        mem, cost = m[keep], c[keep]
    front = []
    for k in range(len(mem)):
        choice, idx = [0] * len(params), k
        for i in range(len(params) - 1, -1, -1):
            parent, j = back[i]
            choice[i] = int(j[idx])
            idx = int(parent[idx])
        front.append(_allocation(table, choice))
    return front


def check_budget(budget_bits) -> float:
    """``budget_bits`` as a float, or a :class:`GenieError` unless it is a positive finite number."""
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(budget_bits)) or float(budget_bits) <= 0:
        raise GenieError(f"the budget must be a positive number of bits per weight (e.g. 2.5), got {shown(budget_bits)}")
    return float(budget_bits)


def allocate(table, budget_bits: float, front: Optional[list] = None) -> BitAllocation:
    """The allocation of least predicted loss whose weight memory is at most the uniform
    ``W{budget_bits}`` model's (:func:`budget_weight_bits`). ``front``: :func:`pareto_front`
    of ``table``, when already computed.

    A budget below the smallest memory the candidates allow is a :class:`GenieError` naming that
    minimum; one above the largest candidate's memory does not constrain the allocation (a
    warning says so)."""
    budget_bits = check_budget(budget_bits)
    front = pareto_front(table) if front is None else front
    limit = budget_weight_bits(table, budget_bits)
    fitting = [a for a in front if a.weight_bits <= limit + 1e-9 * limit]
    lowest = front[0]
    if not fitting:
        free = sum(table.params)
        min_bits = (lowest.weight_bits - _fixed_bits(table)) / free
        raise GenieError(f"a budget of {budget_bits:g} bits per weight ({limit / 8:.0f} bytes) is below the smallest "
                         f"memory the candidates {','.join(map(str, table.bits))} allow: {min_bits:g} bits per weight "
                         f"({lowest.weight_bytes} bytes, every free layer at {table.bits[0]} bits); raise the budget "
                         "or add a narrower candidate")
    best = fitting[-1]
    if budget_bits > table.bits[-1]:
        warnings.warn(f"a budget of {budget_bits:g} bits per weight is above the largest memory the candidates allow "
                      f"({table.bits[-1]} bits per weight): it does not constrain the allocation, and every layer "
                      f"may take the top candidate, {table.bits[-1]} bits", stacklevel=2)
    return dataclasses.replace(best, budget_bits=budget_bits)


def allocate_greedy(table, budget_bits: float) -> BitAllocation:
    """The greedy baseline (as coremltools' and AIMET's simple modes): start with every layer at
    the largest candidate and repeatedly narrow the layer whose next narrower candidate adds the
    least sensitivity per bit saved, until the memory fits. Not optimal; for comparison."""
    budget_bits = check_budget(budget_bits)
    limit = budget_weight_bits(table, budget_bits)
    choice = [len(table.bits) - 1] * len(table.layers)
    alloc = _allocation(table, choice, budget_bits)
    while alloc.weight_bits > limit + 1e-9 * limit:
        best, best_rate = None, math.inf
        for i, j in enumerate(choice):
            if j == 0:
                continue
            saved = table.params[i] * (table.bits[j] - table.bits[j - 1])
            rate = (table.scores[i][j - 1] - table.scores[i][j]) / saved
            if rate < best_rate:
                best, best_rate = i, rate
        if best is None:
            raise GenieError(f"a budget of {budget_bits:g} bits per weight is below the smallest memory the "
                             "candidates allow")
        choice[best] -= 1
        alloc = _allocation(table, choice, budget_bits)
    return alloc
