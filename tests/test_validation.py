"""Argument validation (genie.validate): every numeric option of the command lines is parsed
against a declared range, the API refuses the same values, tensors are checked for dtype, rank
and channels, and sweep arguments are decided before any run. Each refusal is one line (exit
status 2, or a GenieError), never a traceback, and touches no file."""
import argparse
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from genie import sweep
from genie.cli import build_parser, main
from genie.data import evaluate
from genie.distill import distill
from genie.errors import GenieError
from genie.pipeline import RunConfig, check_config
from genie.quant import ReconConfig, fold_batchnorm, load_quantized, quantize_model, reconstruct, save_quantized
from genie.seeding import cpu_generator, derive_seed
from genie.validate import LIST_OPTIONS, OPTION_RANGES, SEED_MAX, NumberOption

from faults import tiny_bn

# arguments a command needs besides the option tried (parsing stops before they are used)
REQUIRED = {"run": [], "distill": ["--out", "set.pt"], "export": ["q.pt", "--out", "m.onnx"],
            "sensitivity": ["--out", "table.json"], "sweep": []}


def _command_lines() -> list:
    """``(label, parser, argv prefix, main function, prog)`` of every command line with options."""
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    lines = [(name, subs[name], [name] + REQUIRED[name], main, "genie") for name in REQUIRED]
    lines.append(("genie.sweep", sweep.build_parser(), [], sweep.main, "genie sweep"))
    return lines


def _options() -> list:
    """Every option of every command line that takes a value: ``(label, action, prefix, main, prog)``."""
    return [(label, action, prefix, run, prog) for label, parser, prefix, run, prog in _command_lines()
            for action in parser._actions if action.option_strings and action.nargs != 0]


def _makes_numbers(action) -> bool:
    """Whether the option's type turns text into numbers (so it must declare a range)."""
    if isinstance(action.type, NumberOption) or action.type in (int, float):
        return True
    if action.type is None or action.type is str:
        return False
    try:
        return isinstance(action.type("7"), (int, float))
    except Exception:
        return False


NUMERIC = [(label, a, prefix, run, prog) for label, a, prefix, run, prog in _options() if _makes_numbers(a)]


def _number(x) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _bad_values(allowed) -> list:
    """Text an option of range ``allowed`` must refuse."""
    bad = ["abc", "", "true", "True", "nan", "inf", "-inf"]
    if allowed.kind is int:
        bad += ["1.5", "2e3", "4.0"]
    if allowed.low is not None:
        bad.append(_number(allowed.low) if allowed.low_open else _number(allowed.low - 1))
    if allowed.high is not None:
        bad.append(_number(allowed.high) if allowed.high_open else _number(allowed.high + 1))
        if allowed.high < 2**70:
            bad.append(str(2**70))
    return bad


def _good_values(allowed) -> list:
    """Text an option of range ``allowed`` must accept, with the value it parses to."""
    low = allowed.low if allowed.low is not None else -3
    good = [] if allowed.low_open else [low]
    good.append(low + 1 if allowed.high is None or low + 1 <= allowed.high else low + 0.5)
    if allowed.high is not None and not allowed.high_open:
        good.append(allowed.high)
    elif allowed.high is None:
        good.append(2**70)  # no upper bound: a huge value is fine
    if allowed.kind is float:
        good.append(float(low) + 0.25 if allowed.high is None or low + 0.25 < allowed.high else low)
    return [(_number(v) if allowed.kind is float else str(int(v)), allowed.kind(v)) for v in good] \
        + [(w, w) for w in allowed.words]


def test_every_numeric_option_declares_a_range():
    """An int or float option without an entry in genie.validate.OPTION_RANGES would parse
    with argparse's defaults (no range, a usage block): every one must have a range."""
    assert {label for label, *_ in NUMERIC} == {"run", "distill", "export", "sensitivity", "sweep", "genie.sweep"}
    undeclared = [f"{label} {a.option_strings[0]}" for label, a, *_ in NUMERIC
                  if not isinstance(a.type, NumberOption) or a.dest not in OPTION_RANGES]
    assert not undeclared, f"numeric options without a declared range (add them to OPTION_RANGES): {undeclared}"


@pytest.mark.parametrize("label,action,prefix,run,prog", NUMERIC,
                         ids=[f"{label} {a.option_strings[0]}" for label, a, *_ in NUMERIC])
def test_bad_numbers_are_refused_in_one_line(label, action, prefix, run, prog, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    option = action.option_strings[0]
    for text in _bad_values(OPTION_RANGES[action.dest]):
        assert run(prefix + [f"{option}={text}"]) == 2, (option, text)
        err = capsys.readouterr().err
        assert err.startswith(f"{prog}: error: {option} ") and err.count("\n") == 1, (text, err)
        assert "Traceback" not in err and "usage:" not in err
    assert os.listdir(tmp_path) == []  # no --out, no checkpoint folder, nothing in the working directory


@pytest.mark.parametrize("label,action,prefix,run,prog", NUMERIC,
                         ids=[f"{label} {a.option_strings[0]}" for label, a, *_ in NUMERIC])
def test_good_numbers_parse(label, action, prefix, run, prog):
    parser = dict((lbl, p) for lbl, p, *_ in _command_lines())[label]
    option, allowed = action.option_strings[0], OPTION_RANGES[action.dest]
    for text, value in _good_values(allowed):
        # the sub-parser of a genie command takes the arguments after the command's name
        argv = (prefix[1:] if run is main else prefix) + [f"{option}={text}"]
        parsed = getattr(parser.parse_args(argv), action.dest)
        expected = (value,) if action.dest in LIST_OPTIONS and not isinstance(value, str) else value
        assert parsed == expected and type(parsed) is type(expected), (option, text, parsed)


def test_the_api_refuses_what_the_command_line_refuses(cifar_spec):
    """RunConfig's numeric fields are checked against the same ranges as their options."""
    fields = [name for name in OPTION_RANGES if name in RunConfig.__dataclass_fields__]
    assert {"seed", "samples", "recon_iters", "drop_prob", "budget_bits", "w_bits"} <= set(fields)
    for name in fields:
        allowed = OPTION_RANGES[name]
        bad = [True, "7", 2**70 if allowed.high is not None and allowed.high < 2**70 else -(2**70)]
        bad += [1.5, 4.0] if allowed.kind is int else [math.nan, math.inf]
        for value in bad:
            if name in LIST_OPTIONS:
                value = (value,)
            with pytest.raises(GenieError, match="--" + name.replace("_", "-")):
                check_config(RunConfig(**{name: value}), cifar_spec)
    cfg = RunConfig(seed=np.uint64(SEED_MAX), a_bits=np.int8(3), samples=np.int64(8))
    check_config(cfg, cifar_spec)
    assert (cfg.seed, cfg.a_bits, cfg.samples) == (SEED_MAX, 3, 8) and type(cfg.seed) is int


def test_a_seed_beyond_the_generators_is_refused_everywhere(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--seed", str(2**70)]) == 2
    err = capsys.readouterr().err
    assert err == ("genie: error: --seed must be an integer from 0 to 2**64 - 1 = 18446744073709551615 (the seeds "
                   "torch's random generators take), got 1180591620717411303424\n")
    for call in (lambda: distill(tiny_bn(), 8, num_images=4, batch_size=4, iters=1, seed=2**70, progress=False),
                 lambda: ReconConfig(seed=2**70).validate(), lambda: ReconConfig(seed=-1).validate()):
        with pytest.raises(GenieError, match=r"seed must be an integer from 0 to 2\*\*64 - 1"):
            call()
    # the largest seed accepted runs through every generator genie seeds
    assert ReconConfig(seed=np.uint64(SEED_MAX)).validate().seed == SEED_MAX
    torch.Generator().manual_seed(SEED_MAX)
    cpu_generator(derive_seed(SEED_MAX, 3))
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def tiny_images():
    return torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_numpy_integers_are_integers_and_bools_are_not(tiny_images):
    qm = quantize_model(tiny_bn(), tiny_images, w_bits=np.int64(4), a_bits=np.int32(4))
    assert qm.config.w_bits == 4 and type(qm.config.w_bits) is int and type(qm.config.a_bits) is int
    with pytest.raises(GenieError, match=r"^reconstruction iterations \(iters\) must be an integer from 0 to "
                                         r"2147483647, got True$"):
        reconstruct(qm, tiny_images, iters=True, progress=False)
    with pytest.raises(GenieError, match=r"got 4\.0 \(a float\)$"):
        reconstruct(qm, tiny_images, iters=4.0, progress=False)
    with pytest.raises(GenieError, match=r"^a_bits must be an integer from 2 to 8, got np\.True_$"):
        quantize_model(tiny_bn(), tiny_images, a_bits=np.bool_(True))
    cfg = ReconConfig(iters=np.int64(0), batch_size=np.int16(4), drop_prob=np.float32(0.25)).validate()
    assert (cfg.iters, cfg.batch_size, cfg.drop_prob) == (0, 4, 0.25) and type(cfg.drop_prob) is float


def test_integer_images_name_their_dtype_and_the_conversion(tiny_images):
    pixels = (tiny_images * 40 + 128).clamp(0, 255).to(torch.uint8)
    with pytest.raises(GenieError) as info:
        quantize_model(tiny_bn(), pixels)
    message = str(info.value)
    assert message.startswith("calibration images must be a float tensor of shape (N, C, H, W), normalised like the "
                              "model's training data, got torch.uint8 of shape (16, 3, 8, 8) with values from ")
    assert "images.float() / 255" in message and "(x - mean) / std" in message
    with pytest.raises(GenieError, match=r"evaluate\(\)'s images must be a float tensor .* got torch\.uint8"):
        evaluate(tiny_bn(), (pixels, torch.zeros(16, dtype=torch.int64)), progress=False)
    with pytest.raises(GenieError, match=r"evaluate\(\)'s labels must be integer class indices, got torch\.float32"):
        evaluate(tiny_bn(), (tiny_images, torch.zeros(16)), progress=False)
    with pytest.raises(GenieError, match=r"layout looks like \(N, H, W, C\): use images\.permute\(0, 3, 1, 2\)"):
        quantize_model(tiny_bn(), tiny_images.permute(0, 2, 3, 1)[:, :, :5])
    with pytest.raises(GenieError, match=r"one image of 3 channels\? add the batch dimension"):
        quantize_model(tiny_bn(), tiny_images[0])


def test_wrong_kinds_of_arguments_are_named(tiny_images, tmp_path):
    with pytest.raises(GenieError, match="^model must be a torch.nn.Module, got 'resnet20_cifar10'"):
        quantize_model("resnet20_cifar10", tiny_images)
    with pytest.raises(GenieError, match="save_quantized takes a QuantizedModel .* got TinyBN"):
        save_quantized(tiny_bn(), tmp_path / "q.pt")
    with pytest.raises(GenieError, match="^path must be a file path"):
        load_quantized(None)
    with pytest.raises(GenieError, match=r"^batch_size must be positive \(an integer >= 1\) or None"):
        evaluate(tiny_bn(), (tiny_images, torch.zeros(16, dtype=torch.int64)), batch_size=0, progress=False)
    with pytest.raises(GenieError, match="distill.. got unknown setting.s. itres"):
        distill(tiny_bn(), 8, itres=5, progress=False)
    assert os.listdir(tmp_path) == []


def test_a_negative_variance_is_named_not_the_pairing(tiny_images):
    model = tiny_bn()
    with torch.no_grad():
        model.bn2.running_var[3] = -0.5
    expected = (r"BatchNorm 'bn2' has running_var\[3\] = -0\.5 with eps 1e-05: a variance must be positive "
                r"\(var \+ eps <= 0 makes that BatchNorm's output NaN or Inf, folded or not\)")
    for fold_bn in (True, False):
        with pytest.raises(GenieError, match=expected) as info:
            quantize_model(model, tiny_images, fold_bn=fold_bn)
        assert "guess" not in str(info.value) and "registration order" not in str(info.value)
    with pytest.raises(GenieError, match=expected):
        fold_batchnorm(model, check_on=tiny_images[:4])
    with pytest.raises(GenieError, match=expected):
        distill(model, 8, num_images=4, batch_size=4, iters=1, distiller="direct", progress=False)


class ConvTwice(nn.Module):
    """Traceable, but its first convolution also runs a second time, on the BN's output: folding
    that BatchNorm into it changes the second call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def test_a_traced_pair_that_folds_wrongly_says_what_was_measured():
    torch.manual_seed(0)
    model = ConvTwice().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.2, 3.0)
        model.bn.weight.uniform_(0.3, 2.0)
    with pytest.raises(GenieError) as info:
        quantize_model(model, torch.randn(4, 4, 8, 8))
    message = str(info.value)
    assert message.startswith("folding BatchNorm 'bn' into convolution 'conv' changes the model's outputs on 4 "
                              "calibration images by up to ")
    assert "torch.fx traced ConvTwice and in its forward pass 'conv' runs 2 times" in message
    assert "guess" not in message and message.endswith("quantize with fold_bn=False (--no-fold-bn)")


def test_a_foreign_checkpoint_names_what_differs(tmp_path):
    kwargs = dict(num_images=4, batch_size=4, iters=1, distiller="direct", progress=False,
                  checkpoint_dir=str(tmp_path))
    distill(tiny_bn(), 8, seed=0, **kwargs)
    with pytest.raises(GenieError, match=r"belongs to a different distillation run \(seed: checkpoint 0, this run 1\); "
                                         r"use another checkpoint directory or delete it"):
        distill(tiny_bn(), 8, seed=1, **kwargs)


@pytest.mark.parametrize("args,message", [
    (["--grid", "w_bits=2", "--grid", "w_bits=4"],
     "--grid gives w_bits twice ('w_bits=2' and 'w_bits=4'): give all its values in one --grid, "
     "e.g. --grid w_bits=2,4"),
    (["--grid", "w_bits=[2,4"], "--grid 'w_bits=[2,4': '[2,4' has an unclosed bracket"),
    (["--grid", "w_bits=2],4"], "--grid 'w_bits=2],4': '2],4' has a bracket never opened"),
    (["--set", "name='abc"], "--set \"name='abc\": the value \"'abc\" is not a complete Python literal"),
    (["--set", "smoke=False", "--set", "smoke=True"], "--set gives smoke twice"),
    (["--set", "w_bits=4", "--grid", "w_bits=2,4"], "w_bits is both swept (--grid) and set (--set)"),
    (["--case", "M1:a=1", "--case", "M1:a=2"], "--case gives M1 twice"),
    (["--case", "M1:a=1,a=2"], "case M1 sets a twice"),
    (["--case", "M1:w_bits=4", "--grid", "w_bits=2"], "--case M1 sets w_bits, which --grid sweeps"),
    (["--grid", "w_bits"], "expected NAME=V1,V2, e.g. w_bits=2,4"),
])
def test_sweep_arguments_are_decided_before_any_run(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv, prog_main in ((["nb.ipynb", "--out", "out"] + args, sweep.main),
                            (["sweep", "nb.ipynb", "--out", "out"] + args, main)):
        assert prog_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("genie sweep: error: ") and message in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []


def test_sweep_api_arguments():
    with pytest.raises(GenieError, match=r"is not a complete Python literal"):
        sweep.parse_value("[2,4")
    assert sweep.parse_value("x]y") == "x]y" and sweep.parse_value("") == ""
    with pytest.raises(GenieError, match=r"axes\['w_bits'\] must be a list of values to sweep, got 4"):
        sweep.plan(axes={"w_bits": 4})
    with pytest.raises(GenieError, match=r"axes\['w_bits'\] is empty"):
        sweep.plan(axes={"w_bits": []})
    with pytest.raises(GenieError, match=r"timeout \(seconds per cell\) must be a finite number > 0"):
        sweep.sweep("nb.ipynb", [], "out", timeout=math.inf)


@pytest.mark.parametrize("argv,message", [
    (["run", "--setting", "paper"], "argument --setting: invalid choice: 'paper' (choose from 'brecq', 'all') "
                                    "(see python -m genie run --help)"),
    (["distill"], "the following arguments are required: --out (see python -m genie distill --help)"),
    (["run", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["sensitivity", "--out", "t.json", "--w-candidates", "2,x"],
     "--w-candidates must be values separated by commas, each an integer from 2 to 8, got 'x' in '2,x'"),
    (["sensitivity", "--out", "t.json", "--w-candidates", ""], "--w-candidates is empty"),
])
def test_other_parse_errors_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genie: error: ") and message in err and err.count("\n") == 1, err
    assert os.listdir(tmp_path) == []
