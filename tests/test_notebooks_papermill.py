"""The notebooks as files (parameters cell, smoke default, algorithms only from genie, rendered
with their figures (1-6), one README section each), a papermill run of the quickstart with injected
parameters through the sweep helper, and the sweep helper's argument handling and failures."""
import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from genie import sweep  # noqa: E402
from genie.errors import GenieError  # noqa: E402
from genie.record import validate_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK = "# NBVAL_CHECK_OUTPUT"


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.name)
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_eight_numbered_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_", "07_", "08_"]


def test_parameters_cell_defaults_to_smoke(notebook):
    path, nb = notebook
    tagged = [c for c in _code(nb) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    assert tagged[0] is _code(nb)[0], f"{path.name}: the parameters cell is the first code cell"
    assert re.search(r"^smoke = True\b", tagged[0].source, re.M), f"{path.name}: smoke = True by default"
    assert "picker(smoke)" in _code(nb)[1].source, f"{path.name}: the cell after the parameters resolves the mode"
    assert "Speed knobs" in nb.cells[0].source, f"{path.name}: the first cell names the speed knobs"
    assert re.search(r"^ASSETS = None", "\n".join(c.source for c in _code(nb)), re.M), f"{path.name}: one asset cell"


def test_smoke_false_switches_every_mode_parameter(notebook):
    """papermill injects its values after the parameters cell: ``-p smoke False`` must reach every
    knob left at None (resolved in the next cell), and an injected knob must win over the mode."""
    path, nb = notebook
    params, settings = _code(nb)[0].source, _code(nb)[1].source
    picks = re.findall(r"^(\w+) = pick\(\1, (.+)\)$", settings, re.M)
    assert picks, f"{path.name}: no pick(...) lines"

    def resolve(injected):
        namespace = {}
        for source in (params, injected, settings):  # the order papermill runs them in
            exec(source, namespace)
        return namespace

    smoke, full = resolve(""), resolve("smoke = False")
    for name, args in picks:
        smoke_value, full_value = ast.literal_eval(f"({args})")
        assert smoke[name] == smoke_value and full[name] == full_value, (path.name, name)
    name = picks[0][0]
    assert resolve(f"smoke = False\n{name} = 7")[name] == 7


def test_algorithms_come_from_genie(notebook):
    """Bar 3: a notebook defines no model, loss or optimiser loop of its own."""
    path, nb = notebook
    source = "\n".join(c.source for c in _code(nb))
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            pytest.fail(f"{path.name} defines class {node.name}")
    for pattern in (r"torch\.optim", r"\.backward\(", r"autograd", r"nn\.(Conv2d|Linear|Sequential)\(",
                    r"\.step\(\)", r"F\.(mse_loss|cross_entropy)", r"\bfor\b.*\brange\(.*iters"):
        assert not re.search(pattern, source), f"{path.name} contains {pattern!r}: use genie's functions"
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert any(m and m.startswith("genie") for m in imported), f"{path.name} imports nothing from genie"
    assert not any(m and m.split(".")[0] not in {"genie", "pathlib"} for m in imported), imported


FIGURE_KINDS = {"image/png", "application/vnd.plotly.v1+json", "text/html"}


def test_checked_cells_keep_their_reference_output(notebook):
    path, nb = notebook
    checked = [c for c in _code(nb) if c.source.lstrip().startswith(CHECK)]
    assert checked, f"{path.name}: at least one deterministic cell is checked by nbval"
    for cell in checked:
        assert cell.outputs, f"{path.name}: a {CHECK} cell needs its reference output"
        assert cell.execution_count is not None, f"{path.name}: nbval ignores reference outputs of unrun cells"
        assert all(o.output_type == "stream" for o in cell.outputs)


def test_rendered_notebooks_show_their_figures(notebook):
    """Every notebook is committed as ``make render`` wrote it: figures and tables in place, the
    note naming the showcase setting after the parameters cell, nothing papermill adds."""
    from genie.render import NOTE_TAG, SHOWCASE

    path, nb = notebook
    tags = [set(c.metadata.get("tags", [])) for c in nb.cells]
    assert not any("injected-parameters" in t for t in tags), f"{path.name}: papermill's injected cell was committed"
    outputs = [o for c in _code(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{path.name}: committed with an error"
    assert path.name in SHOWCASE, f"{path.name} has no showcase setting in genie.render.SHOWCASE"
    notes = [i for i, t in enumerate(tags) if NOTE_TAG in t]
    params = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert notes == [params + 1], f"{path.name}: render it (make render): one setting note after the parameters"
    for key, value in SHOWCASE[path.name].items():
        assert f"`{key}={value!r}`" in nb.cells[notes[0]].source
    figures = [o for o in outputs if FIGURE_KINDS & set(o.get("data", {}))]
    assert len(figures) >= 2, f"{path.name}: the rendered notebook shows fewer than 2 figures"


def test_rendered_outputs_stay_small():
    total = sum(p.stat().st_size for p in NOTEBOOKS)
    assert total < 5_000_000, f"the notebooks take {total / 1e6:.1f} MB with their outputs (limit 5 MB)"


def test_results_are_written_as_the_one_record(notebook):
    """Every notebook writes its result.json through genie.record.write_record, which validates
    the record before writing (so each nbval run checks it); the quickstart's is read back below."""
    path, nb = notebook
    source = "\n".join(c.source for c in _code(nb))
    assert re.search(r"write_record\(.*\"result\.json\", record\)", source), f"{path.name}: no write_record of result.json"
    assert "RunRecord(" in source and f'producer="{path.stem}"' in source
    assert "json.dump" not in source and "write_json" not in source, f"{path.name} writes JSON of its own"


def test_readme_has_a_section_per_notebook():
    readme = (ROOT / "README.md").read_text()
    assert "\n## Notebooks\n" in readme
    section = readme.split("\n## Notebooks\n", 1)[1]
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in section, path.name
        assert f"papermill notebooks/{path.name}" in section, f"papermill command for {path.name}"
    assert "python -m genie.sweep" in section and "make reproduce" in section


# ---------------------------------------------------------------------------------------------
# papermill: the quickstart with injected parameters, through the sweep helper


def test_quickstart_runs_headless_with_injected_parameters(tmp_path):
    out = tmp_path / "sweep"
    status = sweep.main([str(ROOT / "notebooks" / "01_quickstart.ipynb"), "--out", str(out),
                         "--set", "num_images=8", "--set", "distill_batch=8", "--set", "distill_iters=6",
                         "--set", "recon_iters=0", "--set", "seed=3", "--set", "max_drop=5.0",
                         "--grid", "w_bits=8", "--cwd", str(tmp_path)])
    assert status == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in records] == ["w_bits=8"] and records[0]["status"] == "ok"
    result = records[0]["result"]
    validate_record(result, "the quickstart's result.json")  # the one record every producer writes
    assert result["producer"] == "01_quickstart"
    assert (result["w_bits"], result["a_bits"], result["seed"], result["samples"], result["recon_iters"]) == (8, 4, 3, 8, 0)
    assert result["test_file"] == "cifar10_test_first100_lossless.npz" and result["fp_top1"] == pytest.approx(94.0)
    assert result["final_bns_loss"] < result["initial_bns_loss"]
    assert result["q_top1"] >= result["fp_top1"] - 5.0
    assert (out / "w_bits=8" / "qmodel.pt").is_file() and (out / "w_bits=8" / "distilled.pt").is_file()
    csv_head = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"run", "status", "param.w_bits", "q_top1"} <= set(csv_head)

    executed = nbformat.read(out / "w_bits=8" / "01_quickstart.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "w_bits = 8" in injected[0].source and "seed = 3" in injected[0].source
    outputs = [o for c in _code(executed) for o in c.outputs]
    kinds = {k for o in outputs for k in o.get("data", {})}
    assert "image/png" in kinds and "application/vnd.plotly.v1+json" in kinds, kinds  # static figures
    assert "application/vnd.jupyter.widget-view+json" not in kinds  # no widgets headless
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "FP32 resnet20_cifar10: top-1 94.00 %" in text and "W8A4 genie" in text


# ---------------------------------------------------------------------------------------------
# the sweep helper


def _tiny(path, body, params="x = 1\nout_dir = 'runs/tiny'"):
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def test_sweep_records_failed_runs_and_exits_nonzero(tmp_path, capsys):
    nb = _tiny(tmp_path / "tiny.ipynb",
               "import json, pathlib\nassert x != 2, 'x must not be 2'\n"
               "pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
               "(pathlib.Path(out_dir) / 'result.json').write_text(json.dumps({'square': x * x}))")
    status = sweep.main([str(nb), "--out", str(tmp_path / "out"), "--grid", "x=1,2,3"])
    assert status == 1
    records = sweep.load_results(tmp_path / "out")
    assert [(r["run"], r["status"]) for r in records] == [("x=1", "ok"), ("x=2", "failed"), ("x=3", "ok")]
    assert "x must not be 2" in records[1]["error"] and records[2]["result"] == {"square": 9}
    assert "failed: x=2" in capsys.readouterr().err


def test_sweep_rejects_unknown_parameters_before_running(tmp_path, capsys):
    nb = _tiny(tmp_path / "tiny.ipynb", "pass")
    assert sweep.main([str(nb), "--out", str(tmp_path / "out"), "--grid", "y=1,2"]) == 2
    assert "has no parameter y" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert sweep.main([str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "o"), "--dry-run"]) == 2


def _kinds_notebook(path):
    return _tiny(path, "pass", "flag = True\ncount = 4\nrate = 0.5\nname = 'a'\nsizes = [1, 2]\nanything = None\n"
                               "computed = 2 ** 3\nout_dir = 'runs/kinds'")


@pytest.mark.parametrize("key, value, words", [
    ("flag", "False", "True or False"), ("count", 4.0, "an integer"), ("count", True, "an integer"),
    ("rate", "0.5", "a number"), ("name", 3, "a string"), ("sizes", 2, "a list"),
], ids=["string-for-flag", "float-for-int", "bool-for-int", "string-for-float", "int-for-string", "scalar-for-list"])
def test_a_value_of_another_kind_than_the_default_is_refused_before_running(tmp_path, key, value, words):
    nb = _kinds_notebook(tmp_path / "kinds.ipynb")
    with pytest.raises(GenieError, match=rf"run 'r' sets {key} = .*, but kinds\.ipynb's {key} takes {words} "):
        sweep.sweep(nb, [("r", {key: value})], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_values_of_the_defaults_kind_pass_the_check(tmp_path):
    nb = _kinds_notebook(tmp_path / "kinds.ipynb")
    sweep.check_parameters(nb, [("r", {"flag": False, "count": 7, "rate": 1, "name": "b", "sizes": (3,),
                                       "anything": "x", "computed": "no literal default: anything goes"}),
                                ("numpy", {"flag": np.bool_(True), "count": np.int64(7), "rate": np.float32(0.25)})])


def test_a_string_for_a_flag_is_refused_from_the_command_line(tmp_path, capsys):
    nb = _kinds_notebook(tmp_path / "kinds.ipynb")
    assert sweep.main([str(nb), "--out", str(tmp_path / "out"), "--set", "flag='no'"]) == 2
    assert "sets flag = 'no', but kinds.ipynb's flag takes True or False (its default is True)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_plans_cases_times_grid():
    runs = sweep.plan({"M1": {"distiller": "direct"}, "M5": {"distiller": "genie"}}, {"w_bits": [2, 4]}, {"smoke": False})
    assert [name for name, _ in runs] == ["M1_w_bits=2", "M1_w_bits=4", "M5_w_bits=2", "M5_w_bits=4"]
    assert runs[0][1] == {"smoke": False, "distiller": "direct", "w_bits": 2}
    with pytest.raises(GenieError, match="called"):
        sweep.plan({"a": {}}, {"w": ["x y", "x-y"]})


@pytest.mark.parametrize("text,value", [("4", 4), ("0.5", 0.5), ("false", False), ("True", True), ("none", None),
                                        ("genie", "genie"), ("'a,b'", "a,b"), ("[4, 4]", [4, 4])])
def test_parse_value(text, value):
    assert sweep.parse_value(text) == value


def test_parse_assignments_and_cases():
    assert sweep.parse_assignment("bits=[4,4],[2,4]", many=True) == ("bits", [[4, 4], [2, 4]])
    assert sweep.parse_case("M2:distiller=direct,swing=true") == ("M2", {"distiller": "direct", "swing": True})
    for bad in ("novalue", "2x=1"):
        with pytest.raises(GenieError, match="name=value"):
            sweep.parse_assignment(bad)
    with pytest.raises(GenieError, match="NAME:"):
        sweep.parse_case("no colon")
