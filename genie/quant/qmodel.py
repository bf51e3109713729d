"""Building a quantized model from any CNN: blocks from the block table become
:class:`QuantBlock` units, remaining Conv2d/Linear layers become single-layer units.

Weight bits are one integer for every layer, or one per layer (mixed precision): a dict
``{layer name: bits}`` naming the quantized model's layers (``"layer1.0.main.0"``) or the FP
model's (``"layer1.0.conv1"``), or a :class:`genie.quant.allocation.BitAllocation`.

Bit settings (method card, GENIE-M):
* ``"brecq"`` (default; the paper's Tables 2, 3, 5): the first layer's weights and the last
  layer's weights and input at 8 bits, the first quantized activation after the first layer
  (the second layer's input) at 8 bits, everything else at the target bits;
* ``"all"`` (Table 4, the AIT/GDFQ setting): every weight and activation at the target bits.
In both the network input (the image) is not quantized: it is 8-bit data already.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch
from torch import nn

from ..errors import GenieError, shown
from ..finite import require_finite_images, require_finite_model, require_positive_bn_variance
from ..validate import BITS, POSITIVE, check_bool, check_float, check_images, check_int, check_module
from .act_quantizer import ActQuantizer
from .blocks import BlockParts, QuantBlock, default_block_table, flatten_sequential, is_weight_layer, with_act_quants
from .bn_fold import fold_batchnorm, run_on_images
from .layers import QuantLayer
from .step_size import DEFAULT_P
from .weight_quantizer import WEIGHT_METHODS

SETTINGS = ("brecq", "all")
# "paper": activations quantized where the paper quantizes them (every weight layer's input but
# the image's). "deploy": also the image, both inputs of every residual add and every unit
# output that reaches no quantizer first, at 8 bits: every convolution and the classifier read
# and write integers, so an integer runtime runs the whole graph in integers (genie.export)
PROFILES = ("paper", "deploy")
DEPLOY_ACT_BITS = 8  # the quantizers the deploy profile adds
BN_CHECK_IMAGES = 4  # calibration images on which the BN-folded model must match the original
_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class QuantConfig:
    """How a model is quantized. Bits are integers in 2..8; ``w_bits`` is one for every layer or
    ``{layer name: bits}`` (mixed precision; after :func:`quantize_model`, every layer by its
    quantized-model name)."""

    w_bits: Union[int, dict] = 4
    a_bits: int = 4
    quantizer: str = "genie"  # genie | adaround | nearest
    setting: str = "brecq"  # brecq | all
    fold_bn: bool = True
    p_norm: float = DEFAULT_P  # norm of the step-size search (Eq. 16)
    weight_symmetric: bool = False  # signed weights with zero point 0 (runtimes such as TensorRT)
    profile: str = "paper"  # paper | deploy (PROFILES)
    # every activation signed with zero point 0, also where it has no negatives (TensorRT's int8
    # convention; an unsigned tensor then uses half the codes)
    act_symmetric: bool = False

    @property
    def mixed(self) -> bool:
        """Whether the weight bits differ per layer (``w_bits`` is a dict)."""
        return isinstance(self.w_bits, dict)

    def validate(self) -> "QuantConfig":
        if hasattr(self.w_bits, "bits") and isinstance(self.w_bits.bits, dict):  # a BitAllocation
            self.w_bits = dict(self.w_bits.bits)
        if isinstance(self.w_bits, dict):
            if not self.w_bits:
                raise GenieError("w_bits is an empty dict: give {layer name: bits} for the layers, or one integer")
            self.w_bits = {str(k): check_bits(v, f"w_bits[{k!r}]") for k, v in self.w_bits.items()}
        else:
            self.w_bits = check_bits(self.w_bits, "w_bits")
        self.a_bits = check_bits(self.a_bits, "a_bits")
        if self.quantizer not in WEIGHT_METHODS:
            raise GenieError(f"unknown quantizer {self.quantizer!r}; use one of {', '.join(WEIGHT_METHODS)}")
        if self.profile not in PROFILES:
            raise GenieError(f"unknown quantization profile {shown(self.profile)}; use one of {', '.join(PROFILES)}")
        if self.setting not in SETTINGS:
            raise GenieError(f"unknown bit setting {self.setting!r}; use one of {', '.join(SETTINGS)}")
        for flag in ("fold_bn", "weight_symmetric", "act_symmetric"):
            setattr(self, flag, check_bool(getattr(self, flag), flag))
        self.p_norm = check_float(self.p_norm, "p_norm (the norm of the step-size search, Eq. 16)", POSITIVE)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def check_bits(value, name: str) -> int:
    """``value`` as a bit width (Python or numpy integer) in 2..8, else a :class:`GenieError`."""
    return check_int(value, name, BITS)


def check_calibration_images(model: nn.Module, example: torch.Tensor) -> None:
    """A :class:`GenieError` unless ``example`` is a non-empty finite floating-point ``(N, C, H, W)``
    batch with as many channels as ``model``'s first convolution takes (the message names the
    dtype and shape it got and how to convert; :func:`genie.validate.check_images`)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    check_images(example, "calibration images", first.in_channels if first is not None else None)
    require_finite_images(example)


def _check_layers(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, _UNSUPPORTED):
            raise GenieError(
                f"layer {name!r} is a {type(m).__name__}, which genie cannot quantize; supported weight "
                "layers are Conv2d and Linear"
            )
    if not any(is_weight_layer(m) for m in model.modules()):
        raise GenieError(
            f"{type(model).__name__} has no quantizable layer (Conv2d or Linear); nothing to quantize"
        )


def prepare_fp_model(model: nn.Module, fold_bn: bool, check_on: Optional[torch.Tensor] = None) -> nn.Module:
    """An eval-mode FP copy with frozen parameters, non-in-place activations and, if asked,
    BatchNorm folded: the teacher that block outputs are matched against. ``check_on``: a few
    images (on the device the copy is moved to) on which folding must keep the outputs
    (:func:`genie.quant.fold_batchnorm`)."""
    fp = copy.deepcopy(model).eval()
    if check_on is not None:
        fp.to(check_on.device)
    for p in fp.parameters():
        p.requires_grad_(False)
    for m in fp.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False  # activations are reused by the shortcut and the quantizers
    if fold_bn:
        fold_batchnorm(fp, check_on)
    return fp


def _quantize_layers(module: nn.Module, method: str, own_input_quant: bool) -> None:
    """Replace every Conv2d/Linear below ``module`` by a QuantLayer."""
    for name, child in module.named_children():
        if is_weight_layer(child):
            setattr(module, name, QuantLayer(child, method, own_input_quant))
        elif not isinstance(child, (QuantLayer, ActQuantizer)):
            _quantize_layers(child, method, own_input_quant)


def _build_block(block: nn.Module, parts: BlockParts, method: str, deploy: bool) -> QuantBlock:
    qblock = QuantBlock(parts, type(block).__name__, deploy)
    # weight layers on the main path read a quantized tensor placed by the block
    for i, m in enumerate(qblock.main):
        if is_weight_layer(m):
            qblock.main[i] = QuantLayer(m, method, own_input_quant=False)
    if isinstance(qblock.shortcut, nn.Sequential):
        qblock.shortcut = nn.Sequential(*with_act_quants(flatten_sequential(qblock.shortcut.children())))
    if is_weight_layer(qblock.shortcut):
        qblock.shortcut = QuantLayer(qblock.shortcut, method, own_input_quant=False)
    elif isinstance(qblock.shortcut, nn.Sequential):
        for i, m in enumerate(qblock.shortcut):
            if is_weight_layer(m):
                qblock.shortcut[i] = QuantLayer(m, method, own_input_quant=False)
    # anything deeper (e.g. squeeze-excitation) quantizes its own inputs
    _quantize_layers(qblock, method, own_input_quant=True)
    return qblock


def _transform(module: nn.Module, table: dict, method: str, prefix: str, units: list, deploy: bool) -> None:
    for name, child in module.named_children():
        full = prefix + name
        parts_fn = table.get(type(child))
        if parts_fn is not None:
            setattr(module, name, _build_block(child, parts_fn(child), method, deploy))
            units.append(full)
        elif is_weight_layer(child):
            setattr(module, name, QuantLayer(child, method, own_input_quant=True, own_output_quant=deploy))
            units.append(full)
        else:
            _transform(child, table, method, full + ".", units, deploy)


class QuantizedModel(nn.Module):
    """A fake-quantized copy of a CNN (``net``), its :class:`QuantConfig` and its reconstruction
    units (in execution order).

    ``teacher``: the FP model it was built from, prepared the same way
    (``prepare_fp_model(model, config.fold_bn)``: BatchNorm folded like the student), which
    :func:`genie.quant.reconstruct` matches unit outputs against when it is given no other; or
    ``None`` (a loaded model, or after :meth:`release_teacher`). It is a plain attribute, not a
    submodule: it is not in ``state_dict()`` (so :func:`genie.quant.save_quantized` never writes
    it), nor moved by ``.to()``, nor listed by ``modules()``.
    """

    def __init__(self, net: nn.Module, config: QuantConfig, unit_names: list, teacher: Optional[nn.Module]):
        super().__init__()
        self.net = net
        self.config = config
        self.unit_names = list(unit_names)
        self.teacher: Optional[nn.Module] = teacher
        self.arch: Optional[str] = None  # zoo name, when built from the zoo (for save/load)
        self.fixed_w_bits: dict = {}  # {layer: bits} the setting fixes (set by quantize_model)

    def __setattr__(self, name: str, value) -> None:
        if name == "teacher":
            # nn.Module would register a module value as a submodule (state_dict, .to(), modules())
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def release_teacher(self) -> None:
        """Drop the FP teacher (after reconstruction) to free its memory."""
        self.teacher = None

    def units(self) -> list:
        """``[(name, module)]`` of the reconstruction units, in execution order."""
        return [(n, self.net.get_submodule(n)) for n in self.unit_names]

    def layers(self) -> list:
        """``[(name, QuantLayer)]`` in module order."""
        return [(n, m) for n, m in self.net.named_modules() if isinstance(m, QuantLayer)]

    def layer_sources(self) -> dict:
        """``{quantized-model layer name: FP-model layer name}`` (``"layer1.0.main.0"`` ->
        ``"layer1.0.conv1"``), in module order; the FP name is ``None`` where unknown."""
        return {n: m.source_name for n, m in self.layers()}

    def weight_bits(self) -> dict:
        """``{layer: weight bits}`` of every quantized layer, in module order."""
        return {n: m.weight_quant.bits for n, m in self.layers()}

    def act_quantizers(self) -> list:
        return [(n, m) for n, m in self.net.named_modules() if isinstance(m, ActQuantizer)]

    def finalize(self) -> None:
        """Hard-round every weight and keep integers only (done by reconstruction per unit)."""
        for _, layer in self.layers():
            layer.finalize()

    @contextmanager
    def quantization_disabled(self, weights: bool = True, activations: bool = True):
        """Temporarily run the FP function (for comparisons): weights and/or activations."""
        saved = []
        if weights:
            for _, layer in self.layers():
                saved.append((layer.weight_quant, layer.weight_quant.enabled))
                layer.weight_quant.enabled = False
        if activations:
            for _, q in self.act_quantizers():
                saved.append((q, q.enabled))
                q.enabled = False
        try:
            yield self
        finally:
            for q, state in saved:
                q.enabled = state

    def bit_summary(self) -> list:
        """``[(name, kind, bits)]`` for every weight and activation quantizer (for reports)."""
        rows = [(n, "weight", l.weight_quant.bits) for n, l in self.layers()]
        rows += [(n, "activation", q.bits if q.enabled else None) for n, q in self.act_quantizers()]
        return rows


def _probe(qm: QuantizedModel, teacher: nn.Module, example: torch.Tensor) -> dict:
    """One FP pass through student (all quantizers off) and teacher.

    Returns the execution order of weight layers (when they finish) and activation quantizers
    (when they start) as one list, and the units in the order they start; checks that every
    block's parts reproduce its FP output and that no unit runs twice.
    """
    order, unit_order, counts, student_out, teacher_out = [], [], {}, {}, {}
    hooks = []

    def record(name):
        def hook(module, *args):
            order.append(name)

        return hook

    def unit_start(name):
        def hook(module, args):
            counts[name] = counts.get(name, 0) + 1
            unit_order.append(name)

        return hook

    def keep_output(name, store):
        def hook(module, args, output):
            store[name] = output.detach()

        return hook

    named = dict(qm.net.named_modules())
    for name, m in named.items():
        if isinstance(m, QuantLayer):
            hooks.append(m.register_forward_hook(record(name)))
        elif isinstance(m, ActQuantizer):
            hooks.append(m.register_forward_pre_hook(record(name)))
    for name in qm.unit_names:
        hooks.append(named[name].register_forward_pre_hook(unit_start(name)))
        hooks.append(named[name].register_forward_hook(keep_output(name, student_out)))
        hooks.append(teacher.get_submodule(name).register_forward_hook(keep_output(name, teacher_out)))
    try:
        with torch.no_grad(), qm.quantization_disabled():
            run_on_images(teacher, example)
            qm.net(example)
    finally:
        for h in hooks:
            h.remove()
    twice = [n for n in qm.unit_names if counts.get(n, 0) > 1]
    if twice:
        raise GenieError(
            f"units {twice} run more than once per forward pass (shared modules); block "
            "reconstruction needs each block and layer to run once"
        )
    for name in qm.unit_names:
        if name not in student_out:
            continue
        a, b = student_out[name], teacher_out[name]
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * (1 + b.abs().max().item())):
            raise GenieError(
                f"the quantized version of block {name!r} ({type(qm.net.get_submodule(name)).__name__}) does not "
                "reproduce its FP output: its entry in the block table is wrong"
            )
    return {"order": list(dict.fromkeys(order)), "units": list(dict.fromkeys(unit_order))}


# modules through which a tensor reaches a quantizer on the same grid, or that an integer runtime
# folds into the quantizer after them (onnxruntime drops a Relu or Clip before a QuantizeLinear
# whose range it contains, and runs MaxPool on integers)
_TRANSPARENT = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool2d, nn.Dropout)
_DEPLOY_QUANTS = ("main_quant", "shortcut_quant", "output_quant")


@torch.no_grad()
def _units_with_quantized_outputs(qm: QuantizedModel, example: torch.Tensor) -> tuple:
    """``(units, last)``: the units whose output an input quantizer reads (directly, or through
    :data:`_TRANSPARENT` modules), and the unit whose output is the network's output (or None),
    from one FP pass that follows tensors by identity."""
    named = dict(qm.net.named_modules())
    produced, alias, consumed, keep, hooks = {}, {}, set(), [], []

    def unit_output(name):
        def hook(module, args, out):
            produced[id(out)] = name
            keep.append(out)
        return hook

    def passthrough(module, args, out):
        if args and torch.is_tensor(args[0]) and torch.is_tensor(out) and out is not args[0]:
            alias[id(out)] = id(args[0])
            keep.extend((args[0], out))

    def reads(module, args):
        if args and torch.is_tensor(args[0]):
            consumed.add(id(args[0]))
            keep.append(args[0])

    for name in qm.unit_names:
        hooks.append(named[name].register_forward_hook(unit_output(name)))
    for name, m in named.items():
        if isinstance(m, _TRANSPARENT):
            hooks.append(m.register_forward_hook(passthrough))
        elif isinstance(m, ActQuantizer) and name.rsplit(".", 1)[-1] not in _DEPLOY_QUANTS:
            hooks.append(m.register_forward_pre_hook(reads))
    try:
        with qm.quantization_disabled():
            out = qm.net(example)
    finally:
        for h in hooks:
            h.remove()

    def source(tensor_id):
        while tensor_id not in produced and tensor_id in alias:
            tensor_id = alias[tensor_id]
        return produced.get(tensor_id)

    units = {source(c) for c in consumed} - {None}
    return units, (source(id(out)) if torch.is_tensor(out) else None)


def _setting_rules(qm: QuantizedModel, order: list) -> tuple:
    """The bits the setting fixes: ``({layer: bits}, {activation quantizer: bits})``; under
    ``"brecq"`` the first and last layer's weights, the second layer's input and the last
    layer's input at 8 bits, under ``"all"`` nothing."""
    named = dict(qm.net.named_modules())
    layer_order = [n for n in order if isinstance(named[n], QuantLayer)]
    act_order = [n for n in order if isinstance(named[n], ActQuantizer)]
    if not layer_order:
        raise GenieError("no quantizable layer ran in the forward pass; nothing to quantize")
    if qm.config.setting != "brecq":
        return {}, {}
    first, last = layer_order[0], layer_order[-1]
    pos = {n: i for i, n in enumerate(order)}
    acts = {}
    after_first = [a for a in act_order if pos[a] > pos[first]]
    if after_first:
        acts[after_first[0]] = 8  # the second layer's input
    before_last = [a for a in act_order if pos[first] < pos[a] < pos[last]]
    if before_last:
        acts[before_last[-1]] = 8  # the last layer's input
    return {first: 8, last: 8}, acts


def _listed(names: list, limit: int = 24) -> str:
    shown_names = ", ".join(names[:limit])
    return shown_names + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _layer_bits(qm: QuantizedModel, w_bits, fixed: dict) -> dict:
    """``{layer: bits}`` for every layer of ``qm`` (execution order of ``qm.layers()``) from one
    integer or a dict naming layers by their quantized-model or FP-model names; the setting's
    ``fixed`` bits win over an integer and must not be contradicted by a dict."""
    names = [n for n, _ in qm.layers()]
    if not isinstance(w_bits, dict):
        return {n: fixed.get(n, w_bits) for n in names}
    sources = qm.layer_sources()
    by_source = {src: q for q, src in sources.items() if src is not None}
    resolved, unknown = {}, []
    for key, bits in w_bits.items():
        name = key if key in sources else by_source.get(key)
        if name is None:
            unknown.append(key)
        elif resolved.setdefault(name, bits) != bits:
            raise GenieError(f"w_bits gives layer {name!r} two bit widths ({resolved[name]} and {bits}, once by its "
                             f"FP-model name {sources[name]!r}); give it one")
    valid = [f"{q} ({src})" if src and src != q else q for q, src in sources.items()]
    if unknown:
        raise GenieError(f"w_bits names {len(unknown)} layer(s) the model does not have: {_listed(unknown, 8)}; "
                         f"its quantized layers are: {_listed(valid)}")
    for name, bits in fixed.items():
        if name in resolved and resolved[name] != bits:
            raise GenieError(f"w_bits gives layer {name!r} {resolved[name]} bits, but setting {qm.config.setting!r} "
                             f"keeps it at {bits} (the first and last layer): drop it from w_bits, or quantize "
                             "with setting='all' (--setting all)")
    missing = [n for n in names if n not in resolved and n not in fixed]
    if missing:
        raise GenieError(f"w_bits gives no bits for {len(missing)} layer(s): {_listed(missing, 8)}; name every "
                         "layer (genie.quant.allocate returns such a plan) or give one integer")
    return {n: resolved.get(n, fixed.get(n)) for n in names}


def _assign_bits(qm: QuantizedModel, order: list, example: Optional[torch.Tensor] = None) -> None:
    cfg = qm.config
    named = dict(qm.net.named_modules())
    fixed_w, fixed_a = _setting_rules(qm, order)
    layer_bits = _layer_bits(qm, cfg.w_bits, fixed_w)
    for name, layer in qm.layers():
        layer.weight_quant.bits = layer_bits[name]
    if cfg.mixed:
        cfg.w_bits = layer_bits  # every layer, by its quantized-model name (saved with the model)
    qm.fixed_w_bits = fixed_w
    first = next(n for n in order if isinstance(named[n], QuantLayer))
    pos = {n: i for i, n in enumerate(order)}
    for name, q in qm.act_quantizers():
        q.bits = fixed_a.get(name, cfg.a_bits)
        q.enabled = name in pos and pos[name] > pos[first]  # the image input stays FP
    if cfg.profile == "deploy":
        _deploy_quantizers(qm, first, example)


def _deploy_quantizers(qm: QuantizedModel, first: str, example: torch.Tensor) -> None:
    """The deploy profile's quantizers, at :data:`DEPLOY_ACT_BITS`: the image (the first layer's
    input), both inputs of every residual add, and the output of every unit whose output no
    input quantizer reads (not the network's output: the logits stay float)."""
    quantized, last = _units_with_quantized_outputs(qm, example)
    named = dict(qm.net.named_modules())
    image = named[first].input_quant
    if image is not None:
        image.enabled, image.bits = True, DEPLOY_ACT_BITS
    for unit in qm.unit_names:
        module = named[unit]
        for attr in ("main_quant", "shortcut_quant"):
            q = getattr(module, attr, None)
            if q is not None:
                q.enabled, q.bits = True, DEPLOY_ACT_BITS
        out_q = getattr(module, "output_quant", None)
        if out_q is not None:
            out_q.enabled = unit not in quantized and unit != last
            out_q.bits = DEPLOY_ACT_BITS


def _build(model: nn.Module, config: QuantConfig, blocks, device, check_on=None) -> QuantizedModel:
    """Teacher (prepared FP copy) and student structure, before bits and step sizes are set.
    ``check_on``: images that verify BN folding."""
    _check_layers(model)
    teacher = prepare_fp_model(model, config.fold_bn, check_on).to(device)
    table = {} if blocks is False else {**default_block_table(), **(blocks or {})}
    net = copy.deepcopy(teacher)
    for name, m in net.named_modules():
        if is_weight_layer(m):
            m.genie_source_name = name  # kept by its QuantLayer: the FP model's name of the layer
    if type(net) in table or is_weight_layer(net):
        raise GenieError("the model itself is a single block or layer; wrap it in an nn.Module or nn.Sequential")
    unit_names: list = []
    _transform(net, table, config.quantizer, "", unit_names, config.profile == "deploy")
    for m in net.modules():
        if isinstance(m, ActQuantizer):
            m.always_signed = config.act_symmetric
    return QuantizedModel(net, config, unit_names, teacher)


def quantize_model(
    model: nn.Module,
    example_images: torch.Tensor,
    w_bits: int = 4,
    a_bits: int = 4,
    quantizer: str = "genie",
    setting: str = "brecq",
    fold_bn: bool = True,
    p_norm: float = DEFAULT_P,
    blocks: Optional[dict] = None,
    weight_symmetric: bool = False,
    profile: str = "paper",
    act_symmetric: bool = False,
) -> QuantizedModel:
    """Make a fake-quantized copy of ``model`` (which is not modified).

    example_images: ``(N, C, H, W)`` inputs in the model's normalised space (two are used to
    find the execution order; calibration images do). ``blocks``: extra or replacement entries
    ``{block type: parts function}`` for the block table, or ``False`` to treat every layer as
    its own unit. ``profile``: ``"paper"`` (default) or ``"deploy"`` (:data:`PROFILES`: also the
    image, both inputs of every residual add and unit outputs no quantizer reads, at 8 bits, for
    a whole-integer runtime graph). ``weight_symmetric``: signed weights with zero point 0 (for runtimes that
    require it, e.g. TensorRT) instead of the default per-channel asymmetric range.
    ``act_symmetric``: every activation quantizer signed (int8 with zero point 0 when exported),
    also after a ReLU, where only the non-negative half of the codes is used (TensorRT's
    convention); the default makes a tensor without negatives unsigned. Weight step
    sizes are searched here; activation step sizes need data and are set by
    :func:`genie.quant.reconstruct`.
    """
    check_module(model, "model", "pass the FP network to quantize, e.g. genie.models.load_model(name)")
    config = QuantConfig(w_bits, a_bits, quantizer, setting, fold_bn, p_norm, weight_symmetric, profile,
                         act_symmetric).validate()
    check_calibration_images(model, example_images)
    require_finite_model(model, "the model")
    require_positive_bn_variance(model, "the model")
    qm = _build(model, config, blocks, example_images.device, check_on=example_images[:BN_CHECK_IMAGES])
    info = _probe(qm, qm.teacher, example_images[:2])
    qm.unit_names = info["units"]
    _assign_bits(qm, info["order"], example_images[:2])
    for _, layer in qm.layers():
        layer.weight_quant.setup(layer.weight, layer.weight_quant.bits, p_norm, symmetric=weight_symmetric)
    return qm


def integer_model_structure(model: nn.Module, config: QuantConfig, unit_names: list, blocks=None) -> QuantizedModel:
    """The structure of a finalized quantized model (integer weights of the right shapes,
    values unset), to load a saved state into. It has no teacher."""
    qm = _build(model, config.validate(), blocks, torch.device("cpu"))
    for _, layer in qm.layers():
        layer.finalize(placeholder=True)
    qm.unit_names = list(unit_names)
    qm.release_teacher()
    return qm
