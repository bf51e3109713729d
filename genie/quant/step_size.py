"""Step-size initialisation (Eq. 8 / Eq. 16): search the clipping ratio that minimises the
Lp quantization error.

Candidates are ratios r = 1.00, 0.99, ..., 0.01 of the tensor's range; the error is
``mean |x - q(x)|^p`` (p = 2.4 by default). Weights: per output channel, asymmetric (scale and
integer zero point). Activations: per tensor, symmetric; signed when the tensor has negative
values, else unsigned. Ties go to the larger ratio.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..devices import is_channels_last

DEFAULT_P = 2.4
_ELEMENTS_PER_STEP = 1 << 23  # candidates x elements evaluated at once (bounds temporary memory)


def abs_pow_(t: torch.Tensor, p: float) -> torch.Tensor:
    """``|t|^p`` in place. exp(p log|t|) is about twice as fast as ``pow`` on CPUs (same value to
    float rounding; 0 stays 0)."""
    if p == 2:
        return t.square_()
    return t.abs_().log_().mul_(p).exp_()


def clip_ratios(num: int = 100, device=None) -> torch.Tensor:
    """The candidate clipping ratios ``1.00, 0.99, ..., 0.01`` (for ``num=100``)."""
    return torch.arange(num, 0, -1, device=device, dtype=torch.float32) / num


def act_qrange(bits: int, signed: bool) -> tuple:
    """Integer range ``(qmin, qmax)`` of a ``bits``-bit activation quantizer."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def asymmetric_params(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple:
    """Scale and integer zero point that map ``[lo, hi]`` (lo <= 0 <= hi) onto ``[0, 2^bits - 1]``."""
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp(min=1e-8)
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero_point


def quantize_asymmetric(x, scale, zero_point, bits: int):
    """Round-to-nearest fake quantization ``s * (clamp(round(x/s) + z, 0, 2^b - 1) - z)``."""
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 2**bits - 1) - zero_point) * scale


def search_weight_scale(weight: torch.Tensor, bits: int, p: float = DEFAULT_P, num: int = 100,
                        symmetric: bool = False) -> tuple:
    """Per-output-channel step size and zero point minimising the Lp error.

    weight: ``(C_out, ...)``. Returns ``(scale, zero_point)``, both ``(C_out,)`` float32
    (the zero point holds integers in ``[0, 2^bits - 1]``). ``symmetric``: the zero point is
    fixed at ``2^(bits-1)``, so ``w_int - z`` spans the signed range ``[-2^(b-1), 2^(b-1) - 1]``
    (a signed integer weight with zero point 0, which some runtimes require); the range searched
    is ``[-max|w|, max|w|]``.
    """
    w = weight.detach().reshape(weight.shape[0], -1).float()
    if symmetric:
        hi = w.abs().max(dim=1).values
        lo = -hi
    else:
        lo = w.min(dim=1).values.clamp(max=0)
        hi = w.max(dim=1).values.clamp(min=0)
    ratios = clip_ratios(num, w.device)
    best_err = torch.full_like(lo, float("inf"))
    best_scale = torch.ones_like(lo)
    best_zp = torch.zeros_like(lo)
    qmax = 2**bits - 1
    step = max(1, _ELEMENTS_PER_STEP // max(1, w.numel()))
    buf = torch.empty(min(step, num), *w.shape, device=w.device)
    for start in range(0, num, step):
        r = ratios[start : start + step, None]  # (R, 1)
        scale, zp = asymmetric_params(r * lo, r * hi, bits)  # (R, C)
        if symmetric:
            zp = torch.full_like(zp, 2 ** (bits - 1))
        s3, z3 = scale[..., None], zp[..., None]
        q = buf[: len(r)]
        # |w - s * (clamp(round(w / s) + z, 0, qmax) - z)|^p, in place
        torch.div(w[None], s3, out=q)
        q.round_().add_(z3).clamp_(0, qmax).sub_(z3).mul_(s3).sub_(w[None])
        err = abs_pow_(q, p).mean(dim=2)  # (R, C)
        err_min, arg = err.min(dim=0)  # first minimum: the larger ratio wins ties
        better = err_min < best_err
        pick = arg[None]
        best_err = torch.where(better, err_min, best_err)
        best_scale = torch.where(better, scale.gather(0, pick)[0], best_scale)
        best_zp = torch.where(better, zp.gather(0, pick)[0], best_zp)
    return best_scale, best_zp


def _lp_errors(values: torch.Tensor, scales: torch.Tensor, qmin: int, qmax: int, p: float,
               out: torch.Tensor) -> None:
    """Add ``sum |v - s * clamp(round(v / s), qmin, qmax)|^p`` over ``values`` (1-d) for every
    step size ``s`` of ``scales`` ``(R,)`` to ``out`` ``(R,)`` float64, in slices sized to stay in
    cache on CPUs."""
    if values.numel() == 0:
        return
    scales = scales[:, None]
    per_slice = max(1, (_ELEMENTS_PER_STEP if values.is_cuda else 1 << 20) // len(scales))
    buf = torch.empty(len(scales), min(per_slice, values.numel()), device=values.device)
    for part in values.split(per_slice):
        q = buf[:, : part.numel()]
        torch.div(part[None], scales, out=q)
        abs_pow_(q.round_().clamp_(qmin, qmax).mul_(scales).sub_(part[None]), p)
        out += q.sum(dim=1, dtype=torch.float64)


class ActRangeSearch:
    """Streaming per-tensor step-size search for activations over many batches.

    Two passes over the data: ``observe_range(x)`` for every batch, then ``observe_error(x)`` for
    every batch, then ``result()`` -> ``(scale, signed)``. Exact: the same answer as a search over
    all values at once.
    """

    def __init__(self, bits: int, p: float = DEFAULT_P, num: int = 100, always_signed: bool = False):
        self.bits, self.p, self.num = bits, p, num
        self.always_signed = always_signed  # a signed range even for data without negatives (TensorRT-style)
        self.lo = None
        self.hi = None
        self.err = None

    @torch.no_grad()
    def observe_range(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    @property
    def signed(self) -> bool:
        return self.always_signed or bool(self.lo < 0)

    def scales(self) -> torch.Tensor:
        """The candidate step sizes ``(num,)``, largest clipping ratio first (after the range pass)."""
        qmin, qmax = act_qrange(self.bits, self.signed)
        absmax = torch.maximum(self.hi.abs(), self.lo.abs()) if self.signed else self.hi.clamp(min=0)
        return (clip_ratios(self.num, absmax.device) * absmax / qmax).clamp(min=1e-8)

    @torch.no_grad()
    def observe_error(self, x: torch.Tensor) -> None:
        if self.lo is None:
            raise RuntimeError("observe_range must see the data before observe_error")
        if self.err is None:
            self._scales_cache = self.scales()
            self._qrange = act_qrange(self.bits, self.signed)
            self.err = torch.zeros(self.num, dtype=torch.float64, device=x.device)
        flat = x.detach().reshape(-1).float()
        # zeros (half of a ReLU output) have no error at any step size
        _lp_errors(flat[flat != 0], self._scales_cache, *self._qrange, self.p, self.err)

    def result(self) -> tuple:
        """``(scale, signed)``: the best scale (0-d tensor) and whether the range is signed."""
        if self.err is None:
            raise RuntimeError("no data observed")
        best = int(torch.argmin(self.err))  # first minimum: larger ratio wins ties
        return self._scales_cache[best].clone(), self.signed


ACT_SEARCH_SAMPLE = 1 << 16  # values that rank all candidates before the exact errors of the best few
_COARSE_STRIDE = 5  # the estimate ranks every 5th ratio first, then the ones around the best
_REFINE_HALF_WIDTH = 1  # exact errors for the estimate's best ratio and this many either side
ACT_EXACT_LIMIT = 1 << 25  # values beyond which the sampled search's exact errors use a draw of this many
_RUN = 4096  # consecutive values per draw of that sample


def _flat_values(x: torch.Tensor) -> torch.Tensor:
    """All values of ``x`` as float32 ``(numel,)``, in memory order (a view when ``x`` is dense in
    any layout, e.g. channels-last: the search does not depend on the order)."""
    x = x.detach()
    if is_channels_last(x):
        x = x.permute(0, 2, 3, 1)  # a view of the same memory in its own order
    return x.reshape(-1).float()


def _coarse_to_fine(values: torch.Tensor, scales: torch.Tensor, qrange: tuple, p: float) -> dict:
    """Lp errors on ``values`` of some step sizes of ``scales`` ``(R,)`` (largest first), as
    ``{index: error}``: every ``_COARSE_STRIDE``-th candidate, then every one within a stride of the
    best of those. A third of the work of all ``R``; its minimum places the window of the exact
    errors, which then moves to their minimum."""
    num, errors = len(scales), {}

    def measure(idx: list) -> None:
        err = torch.zeros(len(idx), dtype=torch.float64, device=values.device)
        _lp_errors(values, scales[idx], *qrange, p, err)
        errors.update(zip(idx, err.tolist()))

    measure(list(range(0, num, _COARSE_STRIDE)))
    best = min(errors, key=errors.__getitem__)  # keys ascending: the first minimum wins ties
    around = range(max(0, best - _COARSE_STRIDE + 1), min(num, best + _COARSE_STRIDE))
    measure([i for i in around if i not in errors])
    return dict(sorted(errors.items()))


def search_act_scale(x: torch.Tensor, bits: int, p: float = DEFAULT_P, num: int = 100,
                     sample: Optional[int] = None, generator: Optional[torch.Generator] = None,
                     exact_limit: int = ACT_EXACT_LIMIT, always_signed: bool = False) -> tuple:
    """Per-tensor symmetric step size of ``x`` (all values at once): ``(scale, signed)``.

    ``sample=None``: exact, the Lp error of every candidate over every value (``num`` passes).
    ``sample=S``: the candidates are first ranked coarse to fine (every 5th ratio, then the ones
    around the best of those) by their error on ``S`` values drawn (with replacement) by
    ``generator``, or on all values when ``x`` has at most ``2 S``; the exact error over all values
    is then computed for the best-ranked ratio and its two neighbours, and the window widens while
    the exact minimum sits on its edge. The result is the exact search's answer whenever the exact
    error has one minimum near the estimate's (the Lp error of a large tensor is a smooth function
    of the ratio; on the activations of the CIFAR ResNets at 16-1024 images and 2-8 bits, 652
    searches gave the answer of a full ranking of all ``num`` ratios on the same draw); it costs
    about ``0.3 num * S / n + 3`` passes instead of ``num``. Zeros (half of a ReLU's output) have
    no error at any step size and are skipped. A tensor of more than ``exact_limit`` values
    (more than ``2 S``; activations of hundreds of ImageNet images reach 10^8-10^9) has those
    errors measured on ``exact_limit`` values drawn by ``generator`` (the range still comes from every value): a mean over 3*10^7 values ranks
    neighbouring ratios as the full mean does, at a fraction of the time.
    ``always_signed``: a signed range (zero point 0 in int8) even when ``x`` has no negatives.
    """
    search = ActRangeSearch(bits, p, num, always_signed)
    flat = _flat_values(x)
    search.observe_range(flat)
    if sample is None:
        search.observe_error(flat)
        return search.result()
    scales = search.scales()
    qrange = act_qrange(bits, search.signed)
    if flat.numel() <= 2 * sample:  # few values: ranked on all of them, so these errors are exact
        values = flat[flat != 0]
        exact = _coarse_to_fine(values, scales, qrange, p)
        centre = min(exact, key=exact.__getitem__)  # keys ascending: the first minimum wins ties
    else:
        drawn = flat[torch.randint(flat.numel(), (sample,), generator=generator, device=flat.device)]
        estimate = _coarse_to_fine(drawn[drawn != 0], scales, qrange, p)  # zeros add no error: skipped
        centre, exact = min(estimate, key=estimate.__getitem__), {}
        if flat.numel() > exact_limit:
            # runs of _RUN consecutive values at random places: copying runs is ~15x faster than
            # gathering single values, and a run (in memory order) spans every channel
            runs = flat[: flat.numel() // _RUN * _RUN].view(-1, _RUN)
            flat = runs[torch.randint(len(runs), (exact_limit // _RUN,), generator=generator,
                                      device=flat.device)].view(-1)
        values = flat[flat != 0]

    def measure(lo: int, hi: int) -> None:
        todo = [i for i in range(max(0, lo), min(num, hi)) if i not in exact]
        if todo:
            err = torch.zeros(len(todo), dtype=torch.float64, device=values.device)
            _lp_errors(values, scales[todo], *qrange, p, err)
            exact.update(zip(todo, err.tolist()))

    lo, hi = centre - _REFINE_HALF_WIDTH, centre + _REFINE_HALF_WIDTH + 1
    measure(lo, hi)
    while True:
        best = min(sorted(exact), key=exact.__getitem__)  # sorted: first minimum, larger ratio wins ties
        if best == min(exact) and best > 0:
            lo -= 2 * _REFINE_HALF_WIDTH
        elif best == max(exact) and best < num - 1:
            hi += 2 * _REFINE_HALF_WIDTH
        else:
            return scales[best].clone(), search.signed
        measure(lo, hi)
