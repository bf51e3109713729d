"""Per-layer sensitivity to weight quantization, measured on calibration images (distilled or
real): how much the network's output moves when only one layer's weights are quantized at
``b`` bits, for every free layer and candidate ``b``. The input of mixed-precision allocation
(:mod:`genie.quant.allocation`).

Methods (``SENSITIVITY_METHODS``):

* ``"kl"`` (ZeroQ): ``mean_n KL(p_FP(x_n) || p_q(x_n))`` of the softmax outputs, with every
  other layer and every activation in FP; one network forward per layer and bit width.
* ``"fisher"`` (BRECQ-style, in each layer's output space): ``0.5 * mean_n sum_i g_ni^2 dz_ni^2``,
  with ``dz = layer(x; W_q) - layer(x; W)`` the change of the layer's output and ``g`` the
  gradient of the cross-entropy against labels drawn from the model's own softmax (the Fisher
  information's expectation, no label needed), both on the FP network. A second-order estimate
  of the same KL: one forward and backward pass for all layers, then one layer-sized product
  per layer and bit width.

Weights are quantized as the quantizer starts them: per output channel, round to nearest with
the step size searched by Eq. 16 (norm ``p_norm``), BatchNorm folded like the model that will
be reconstructed. Layers whose bits the setting fixes (the first and last layer at 8 bits under
``"brecq"``) are not measured: they are listed in ``fixed``.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu_memory import retain_freed_memory
from ..devices import model_device
from ..digests import tensor_bytes
from ..errors import GenieError, shown
from ..files import read_json, write_json
from ..validate import COUNT, SEED, check_int
from .qmodel import QuantizedModel, check_bits, quantize_model
from .step_size import DEFAULT_P

SENSITIVITY_METHODS = ("kl", "fisher")
DEFAULT_CANDIDATES = (2, 3, 4, 8)
TABLE_FORMAT = "genie.sensitivity-table"
TABLE_VERSION = 1


def weights_fingerprint(model: nn.Module) -> str:
    """16 hex digits of the sha256 of ``model``'s parameters and buffers (names, shapes, values):
    which model a sensitivity table was measured on."""
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        if torch.is_tensor(t):
            digest.update(name.encode())
            digest.update(str(tuple(t.shape)).encode())
            digest.update(tensor_bytes(t))
    return digest.hexdigest()[:16]


@dataclass
class SensitivityTable:
    """Sensitivity of every free layer at every candidate bit width.

    ``layers``: the free layers (quantized-model names, execution order); ``sources``: their
    names in the FP model; ``params``: weights per layer; ``bits``: the candidates, ascending;
    ``scores[i][j]``: layer ``i`` at ``bits[j]`` (>= 0, in ``method``'s units: nats for ``kl``);
    ``fixed``: ``{layer: [bits, params]}`` of the layers the setting fixes. ``model`` names the
    model (zoo name or class), ``fingerprint`` its weights (:func:`weights_fingerprint`).
    """

    layers: list
    sources: list
    params: list
    bits: list
    scores: list
    fixed: dict
    method: str
    setting: str
    fold_bn: bool
    weight_symmetric: bool
    images: int
    seconds: float
    model: str
    fingerprint: str
    order: list = field(default_factory=list)  # every quantized layer (free and fixed), module order
    extra: dict = field(default_factory=dict)

    def score(self, layer: str, bits: int) -> float:
        return self.scores[self.layers.index(layer)][self.bits.index(bits)]

    def matrix(self) -> torch.Tensor:
        """The scores ``(layers, bits)`` as a float64 tensor."""
        return torch.tensor(self.scores, dtype=torch.float64)

    def rows(self) -> list:
        """One dict per (layer, bits): ``layer``, ``source``, ``params``, ``bits``, ``score``
        (the long form plotting libraries take)."""
        return [{"layer": layer, "source": src, "params": p, "bits": b, "score": s}
                for layer, src, p, row in zip(self.layers, self.sources, self.params, self.scores)
                for b, s in zip(self.bits, row)]

    def check_model(self, model: nn.Module, what: str = "the model") -> None:
        """A :class:`GenieError` unless the table was measured on ``model`` (same weights)."""
        found = weights_fingerprint(model)
        if found != self.fingerprint:
            raise GenieError(f"this sensitivity table was measured on another model ({self.model}, weights "
                             f"{self.fingerprint}) than {what} (weights {found}): measure it again on this model "
                             "(genie.quant.measure_sensitivity, or python -m genie sensitivity)")

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, **asdict(self)}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the table as JSON to ``path`` (atomically)."""
        return write_json(path, self.to_dict(), "the sensitivity table")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SensitivityTable":
        """A table written by :meth:`save`; a :class:`GenieError` for any other file."""
        data = read_json(path, "sensitivity table")
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise GenieError(f"{path} is not a genie sensitivity table (write one with python -m genie sensitivity)")
        if data.get("version") != TABLE_VERSION:
            raise GenieError(f"{path} is a sensitivity table of version {data.get('version')}; this genie reads "
                             f"version {TABLE_VERSION}: measure it again")
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def check_candidates(candidates, option: str = "candidates") -> list:
    """The candidate bit widths, checked (integers 2..8, at least one) and sorted without repeats."""
    if isinstance(candidates, (str, bytes)) or not hasattr(candidates, "__iter__"):
        raise GenieError(f"{option} must be a list of bit widths such as 2,3,4,8, got {shown(candidates)}")
    bits = sorted({check_bits(b, f"every bit width of {option}") for b in candidates})
    if not bits:
        raise GenieError(f"{option} is empty: give at least one bit width from 2 to 8, e.g. 2,3,4,8")
    return bits


def _chunks(images: torch.Tensor, size: int):
    """``images`` in chunks of ``size``; channels-last on CPUs (oneDNN's fast layout, as
    :func:`genie.data.evaluate` runs)."""
    cpu = images.device.type == "cpu"
    return [x.contiguous(memory_format=torch.channels_last) if cpu else x
            for x in images.split(size)]


@torch.no_grad()
def _quantized_weights(free: list, bits: list, setup) -> list:
    """``[[W_q of layer i at bits[j]] for j] for i]``, round to nearest (the quantizer's start)."""
    weights = []
    for _, layer in free:
        row = []
        for b in bits:
            setup(layer, b)
            layer.weight_quant.enabled = True
            row.append(layer.weight_quant(layer.weight))
            layer.weight_quant.enabled = False
        weights.append(row)
    return weights


@contextmanager
def _replayed(modules: list, outputs: list):
    """Each module of ``modules`` returns its output in ``outputs`` without computing: the units
    that run before a perturbed layer give what they gave in the FP pass, so only the rest of
    the network is computed again."""
    for module, out in zip(modules, outputs):
        module.forward = lambda *args, _out=out, **kwargs: _out
    try:
        yield
    finally:
        for module in modules:
            del module.forward


@torch.no_grad()
def _kl_scores(qm: QuantizedModel, free: list, bits: list, images: torch.Tensor, chunk: int,
               setup) -> torch.Tensor:
    units = [m for _, m in qm.units()]
    unit_of = {}  # layer -> index of the unit holding it
    for k, (unit_name, _) in enumerate(qm.units()):
        for name, _ in free:
            if name == unit_name or name.startswith(unit_name + "."):
                unit_of[name] = k
    w_q = _quantized_weights(free, bits, setup)
    scores = torch.zeros(len(free), len(bits), dtype=torch.float64, device=images.device)
    unit_out = [None] * len(units)

    def keep(k):
        def hook(module, args, out):
            unit_out[k] = out
        return hook

    for x in _chunks(images, chunk):
        hooks = [u.register_forward_hook(keep(k)) for k, u in enumerate(units)]
        try:
            log_p = F.log_softmax(qm.net(x).double(), dim=1)
        finally:
            for h in hooks:
                h.remove()
        for i, (name, layer) in enumerate(free):
            k = unit_of[name]
            fp_weight = layer.weight
            with _replayed(units[:k], unit_out[:k]):
                for j in range(len(bits)):
                    layer.weight = w_q[i][j]
                    log_q = F.log_softmax(qm.net(x).double(), dim=1)
                    scores[i, j] += F.kl_div(log_q, log_p, log_target=True, reduction="sum")
            layer.weight = fp_weight
    return (scores / len(images)).cpu()


def _fisher_scores(qm: QuantizedModel, free: list, bits: list, images: torch.Tensor, chunk: int,
                   setup, generator: torch.Generator) -> torch.Tensor:
    w_q = _quantized_weights(free, bits, setup)
    deltas = [[w - layer.weight for w in row] for row, (_, layer) in zip(w_q, free)]  # W_q - W
    scores = torch.zeros(len(free), len(bits), dtype=torch.float64, device=images.device)
    inputs, outputs = {}, {}

    def keep(i):
        def hook(module, args, out):
            inputs[i] = args[0].detach()
            outputs[i] = out
        return hook

    hooks = [layer.register_forward_hook(keep(i)) for i, (_, layer) in enumerate(free)]
    try:
        for x in _chunks(images, chunk):
            x = x.detach().requires_grad_(True)  # the layers' weights are buffers: a graph through x
            with torch.enable_grad():
                logits = qm.net(x)
                probs = F.softmax(logits.detach().double(), dim=1)
                labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                loss = F.cross_entropy(logits, labels, reduction="sum")
                grads = torch.autograd.grad(loss, [outputs[i] for i in range(len(free))])
            with torch.no_grad():
                for i, (_, layer) in enumerate(free):
                    g2 = grads[i].double().square()
                    for j, delta in enumerate(deltas[i]):
                        dz = layer.apply_weight(inputs[i], delta, None).double()
                        scores[i, j] += (g2 * dz.square()).sum()
            inputs.clear()
            outputs.clear()
    finally:
        for h in hooks:
            h.remove()
    return (scores / (2 * len(images))).cpu()


def measure_sensitivity(
    model: nn.Module,
    images: torch.Tensor,
    candidates: Sequence[int] = DEFAULT_CANDIDATES,
    method: str = "kl",
    setting: str = "brecq",
    fold_bn: bool = True,
    weight_symmetric: bool = False,
    p_norm: float = DEFAULT_P,
    seed: int = 0,
    chunk_size: Optional[int] = None,
    blocks: Optional[dict] = None,
    model_name: Optional[str] = None,
) -> SensitivityTable:
    """The :class:`SensitivityTable` of ``model`` (not modified) on ``images`` ``(N, C, H, W)``
    (normalised, on the model's device).

    ``candidates``: bit widths in 2..8; ``method``: ``"kl"`` or ``"fisher"`` (module docstring);
    ``setting``, ``fold_bn``, ``weight_symmetric``, ``p_norm``, ``blocks``: as for
    :func:`genie.quant.quantize_model`, so the layers and weights measured are the ones that
    will be quantized. ``seed``: the labels the Fisher estimate draws. ``chunk_size``: images
    per forward pass (default 256 on a CPU, 1024 on a GPU).
    """
    t0 = time.perf_counter()
    bits = check_candidates(candidates)
    seed = check_int(seed, "seed", SEED)
    chunk_size = check_int(chunk_size, "chunk_size", COUNT, or_none=" or None (automatic)")
    if method not in SENSITIVITY_METHODS:
        raise GenieError(f"unknown sensitivity method {shown(method)}; use one of {', '.join(SENSITIVITY_METHODS)}")
    qm = quantize_model(model, images, w_bits=8, a_bits=8, quantizer="nearest", setting=setting, fold_bn=fold_bn,
                        p_norm=p_norm, blocks=blocks, weight_symmetric=weight_symmetric)
    qm.release_teacher()
    qm.eval()
    device = model_device(qm)
    retain_freed_memory(device)  # on a CPU: the passes' tensors reused from the heap, not faulted in anew
    chunk = chunk_size or (256 if device.type == "cpu" else 1024)
    free = [(n, layer) for n, layer in qm.layers() if n not in qm.fixed_w_bits]
    sources = qm.layer_sources()

    def setup(layer, b):
        layer.weight_quant.setup(layer.weight, b, p_norm, symmetric=weight_symmetric)

    with qm.quantization_disabled():
        if method == "kl":
            scores = _kl_scores(qm, free, bits, images, chunk, setup)
        else:
            generator = torch.Generator(device=device).manual_seed(seed)
            scores = _fisher_scores(qm, free, bits, images, chunk, setup, generator)
    layers = dict(qm.layers())
    return SensitivityTable(
        layers=[n for n, _ in free],
        sources=[sources[n] for n, _ in free],
        params=[layer.weight.numel() for _, layer in free],
        bits=bits,
        scores=scores.clamp(min=0).tolist(),  # KL >= 0; float rounding can leave -1e-17
        fixed={n: [b, layers[n].weight.numel()] for n, b in qm.fixed_w_bits.items()},
        method=method,
        setting=setting,
        fold_bn=fold_bn,
        weight_symmetric=weight_symmetric,
        images=len(images),
        seconds=time.perf_counter() - t0,
        model=model_name or type(model).__name__,
        fingerprint=weights_fingerprint(model),
        order=list(layers),
    )
