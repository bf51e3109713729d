"""The result record (genie.record): what every producer writes as result.json, checked on write
and read, and collected by ``python -m genie.sweep --collect`` into one table."""
import csv
import json
import re

import pytest
import torch

from genie.cli import main as cli_main
from genie.distill.dataset import DistilledSet
from genie.errors import GenieError
from genie.record import FIELDS, SCHEMA_VERSION, RunRecord, read_record, validate_record, write_record
from genie.sweep import main as sweep_main
from genie.sweep import write_results


def assert_valid_result(path, producer=None) -> RunRecord:
    """``path`` (a result.json) holds a valid record of this schema, exactly as ``write_record``
    writes it, from ``producer`` when given; returns the record (for the caller's own checks)."""
    record = read_record(path)  # raises GenieError naming the file and the field
    data = json.loads(open(path).read())
    assert data == record.to_dict() and list(data) == list(record.to_dict()), f"{path}: not as write_record writes it"
    assert data["schema"] == SCHEMA_VERSION
    if producer is not None:
        assert record.producer == producer, (path, record.producer)
    return record


# a few of the keys a `genie run` reports (RunResult.values), and a notebook's own record
CLI_VALUES = {"model": "resnet20_cifar10", "w_bits": 4, "a_bits": 4, "setting": "brecq", "data": "real", "samples": 16,
              "recon_iters": 0, "quantizer": "genie", "seed": 0, "device": "cpu", "test_file": "t.npz",
              "test_images": 100, "fp_top1": 94.0, "fp_top5": 99.0, "q_top1": 90.0, "recon_seconds": 1.5,
              "units": [{"name": "conv1", "final_error": 0.1}], "total_seconds": 3.0}


def notebook_record() -> RunRecord:
    return RunRecord(producer="04_genie_m", model="resnet20_cifar10", w_bits=2, a_bits=4, data="real", samples=16,
                     recon_iters=12, seed=0, test_file="t.npz", fp_top1=94.0,
                     extra={"smoke": True, "genie_top1": 80.0, "adaround_summed_error": 3.5,
                            "table": {"M1": 70.0}, "curve": [1.0, 0.5]})


def test_the_clis_result_json_is_a_valid_record(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--device", "cpu", "--recon-iters", "0", "--test-source", "lossless100", "--no-progress",
            "--samples", "16", "--out", str(out)]
    assert cli_main(argv) == 0
    record = assert_valid_result(out / "result.json", producer="genie run")
    assert (record.w_bits, record.a_bits, record.samples, record.recon_iters, record.data) == (4, 4, 16, 0, "real")
    assert record.test_file == "cifar10_test_first100_lossless.npz" and record.test_images == 100
    assert 0 <= record.q_top1 <= 100 and record.distiller is None
    # what only the CLI reports is kept, under extra
    assert record.extra["setting"] == "brecq" and record.extra["units"] and "q_top5" in record.extra


def test_a_record_survives_write_and_read(tmp_path):
    record = RunRecord.from_values("genie run", CLI_VALUES)
    assert record.q_top1 == 90.0 and record.extra == {k: CLI_VALUES[k] for k in ("setting", "fp_top5", "units")}
    write_record(tmp_path / "result.json", record)
    assert assert_valid_result(tmp_path / "result.json") == record
    assert list(record.to_dict())[:3] == ["schema", "producer", "model"] and list(record.to_dict())[-1] == "extra"


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("model"), "field 'model' is missing"),
    (lambda d: d.update(w_bits="4"), "field 'w_bits' must be an integer or null, got '4'"),
    (lambda d: d.update(samples=True), "field 'samples' must be an integer or null, got True"),
    (lambda d: d.update(q_top1="high"), "field 'q_top1' must be a number or null"),
    (lambda d: d.update(extra=[1]), "field 'extra' must be an object"),
    (lambda d: d.update(num_images=16), "unknown field 'num_images'; producer-specific values go under 'extra'"),
    (lambda d: d.update(schema=SCHEMA_VERSION + 1), f"has record schema {SCHEMA_VERSION + 1}, this genie reads "
                                                    f"schema {SCHEMA_VERSION}: upgrade genie"),
    (lambda d: d.update(schema=0), "run its producer again with this genie"),
    (lambda d: d.pop("schema"), "is not a genie result record (no 'schema' field)"),
])
def test_validate_names_the_field_and_the_file(change, message):
    data = notebook_record().to_dict()
    change(data)
    with pytest.raises(GenieError, match="^somewhere/result.json") as exc:
        validate_record(data, "somewhere/result.json")
    assert message in str(exc.value)


def test_read_and_write_name_the_file(tmp_path):
    bad = tmp_path / "result.json"
    bad.write_text(json.dumps({"schema": SCHEMA_VERSION, "producer": "x", "model": "m", "a_bits": 4.5}))
    with pytest.raises(GenieError, match="^" + re.escape(f"{bad}: field 'a_bits' must be an integer or null")):
        read_record(bad)
    with pytest.raises(GenieError, match="no result record at"):
        read_record(tmp_path / "missing.json")
    record = notebook_record()
    record.fp_top1 = torch.tensor(94.0)  # a value not taken out of its tensor
    with pytest.raises(GenieError, match=re.escape(f"the result record for {tmp_path / 'new.json'}: field 'fp_top1'")):
        write_record(tmp_path / "new.json", record)
    record.fp_top1, record.extra["t"] = 94.0, torch.tensor(1.0)
    with pytest.raises(GenieError, match="holds a value JSON cannot store"):
        write_record(tmp_path / "new.json", record)
    assert not (tmp_path / "new.json").exists()


def _sweep_folder(folder, runs):
    folder.mkdir(parents=True)
    write_results(runs, folder)  # as genie.sweep.sweep writes it


def _table(root):
    with open(root / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_collect_gives_one_table_of_record_fields(tmp_path, capsys):
    cli = RunRecord.from_values("genie run", CLI_VALUES).to_dict()
    _sweep_folder(tmp_path / "cli", [{"run": "w_bits=4", "parameters": {"w_bits": 4}, "status": "ok",
                                      "seconds": 5.0, "result": cli}])
    _sweep_folder(tmp_path / "nb" / "04", [
        {"run": "run", "parameters": {}, "status": "ok", "seconds": 9.0, "result": notebook_record().to_dict()},
        {"run": "broken", "parameters": {"smoke": False}, "status": "failed", "seconds": 1.0, "error": "cell 3: boom"},
    ])
    assert sweep_main(["--collect", str(tmp_path)]) == 1  # one run failed
    out = capsys.readouterr().out
    assert "cli/w_bits=4: ok  fp_top1=94.00, q_top1=90.00" in out and "nb/04/run: ok  fp_top1=94.00" in out
    assert "extra.genie_top1=80.00" in out and "3 runs; wrote" in out

    rows = _table(tmp_path)
    columns = list(rows[0])
    record_columns = [f for f in FIELDS if f != "extra"]
    assert columns[:4 + len(record_columns)] == ["sweep", "run", "status", "seconds", *record_columns]
    assert columns[-2:] == ["error", "problem"]
    extras = [c for c in columns if c.startswith("extra.")]
    assert extras == ["extra.setting", "extra.fp_top5", "extra.smoke", "extra.genie_top1",
                      "extra.adaround_summed_error", "extra.table.M1"]  # lists (units, curve) left out
    assert [(r["sweep"], r["producer"], r["q_top1"], r["fp_top1"], r["w_bits"]) for r in rows] == [
        ("cli", "genie run", "90.0", "94.0", "4"), ("nb/04", "04_genie_m", "", "94.0", "2"), ("nb/04", "", "", "", "")]
    assert rows[1]["extra.genie_top1"] == "80.0" and rows[0]["extra.genie_top1"] == ""
    assert rows[2]["error"] == "cell 3: boom" and rows[2]["param.smoke"] == "False"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [list(r) for r in summary] == [columns] * 3 and summary[0]["q_top1"] == 90.0


def test_collect_reports_a_result_that_is_no_record(tmp_path, capsys):
    _sweep_folder(tmp_path / "old", [
        {"run": "a", "parameters": {}, "status": "ok", "seconds": 1.0, "result": {"notebook": "01", "q_top1": 50.0}},
        {"run": "b", "parameters": {}, "status": "ok", "seconds": 1.0, "result": notebook_record().to_dict()},
    ])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.json").write_text("{not json")
    assert sweep_main(["--collect", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    results = tmp_path / "old" / "results.json"
    assert f"not a valid result: {results} (run a) is not a genie result record (no 'schema' field)" in out
    assert f"not a valid result: {tmp_path / 'junk' / 'results.json'}: Expecting property name" in out
    assert "3 runs, 2 without a valid result" in out
    rows = {r["run"]: r for r in _table(tmp_path)}
    assert rows["a"]["q_top1"] == "" and str(results) in rows["a"]["problem"]
    assert rows["b"]["problem"] == "" and rows["b"]["extra.genie_top1"] == "80.0"


def test_initial_and_final_loss_of_a_distilled_set():
    losses = torch.tensor([[4.0, 6.0], [2.0, 2.0], [1.0, 0.0]])  # (iters, batches)
    ds = DistilledSet(torch.zeros(4, 3, 2, 2), {}, losses, torch.zeros(2, 1))
    assert (ds.initial_loss, ds.final_loss) == (5.0, 0.5)
