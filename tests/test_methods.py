"""The paper's Table 2 method list (genie.methods) and the defaults written once."""
import shlex
from pathlib import Path

import pytest

from genie.cli import build_parser
from genie.distill import DISTILLERS, DistillConfig
from genie.methods import TABLE2, cli_flags, sweep_case
from genie.pipeline import RunConfig
from genie.quant import ReconConfig
from genie.quant.weight_quantizer import WEIGHT_METHODS
from genie.sweep import parse_case


def test_table2_lists_the_paper_methods():
    assert list(TABLE2) == ["M1", "M2", "M3", "M4", "M5"]
    rows = [(m["distiller"], m["swing"], m["quantizer"]) for m in TABLE2.values()]
    assert rows == [("direct", False, "adaround"), ("direct", True, "adaround"), ("genie", False, "adaround"),
                    ("genie", True, "adaround"), ("genie", True, "genie")]
    assert all(d in DISTILLERS and q in WEIGHT_METHODS for d, _, q in rows)
    with pytest.raises(TypeError):
        TABLE2["M1"]["swing"] = True  # read-only: one definition for everyone


@pytest.mark.parametrize("method", list(TABLE2))
def test_cli_flags_and_sweep_cases_say_the_same(method):
    args = build_parser().parse_args(["run", *shlex.split(cli_flags(method))])
    assert {k: getattr(args, k) for k in TABLE2[method]} == dict(TABLE2[method])
    assert parse_case(sweep_case(method)) == (method, dict(TABLE2[method]))
    assert RunConfig(**TABLE2[method]).distill_config().distiller == TABLE2[method]["distiller"]


def test_run_defaults_are_the_solvers_defaults():
    run, recon, dist = RunConfig(), ReconConfig(), DistillConfig()
    assert (run.recon_iters, run.batch_size, run.drop_prob) == (recon.iters, recon.batch_size, recon.drop_prob)
    assert (run.qdrop_input, run.round_weight) == (recon.qdrop_input, recon.round_weight)
    assert run.distill_config() == DistillConfig(num_images=run.num_samples, seed=run.seed)
    args = build_parser().parse_args(["run"])
    assert (args.recon_iters, args.batch_size, args.drop_prob) == (recon.iters, recon.batch_size, recon.drop_prob)
    assert (args.qdrop_input, args.round_weight) == (recon.qdrop_input, recon.round_weight)
    assert (args.distiller, args.swing, args.distill_iters, args.distill_batch) == (
        dist.distiller, dist.swing, dist.iters, dist.batch_size)
    assert build_parser().parse_args(["distill", "--out", "x.pt"]).samples == dist.num_images


def test_the_readme_lists_table2_as_defined():
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    for method in TABLE2:
        assert f"{method} `{cli_flags(method)}`" in readme, f"README: {method} differs from genie.methods.TABLE2"
