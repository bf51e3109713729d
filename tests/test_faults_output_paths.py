"""Every output path is checked before any model is loaded: exit status 2 and one line."""
import os
from pathlib import Path

import pytest

import genie.files
import genie.models
import genie.pipeline
from genie.cli import main

from faults import QUICK_RUN


@pytest.fixture
def no_model_loading(monkeypatch):
    """A check that comes after loading the model fails these tests."""
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(genie.pipeline, "load_model", load_model)
    monkeypatch.setattr(genie.models, "load_model", load_model)


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("genie: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_run_out_is_an_existing_file(tmp_path, capsys, no_model_loading):
    (tmp_path / "taken").write_text("x")
    assert main(QUICK_RUN + ["--out", str(tmp_path / "taken")]) == 2
    assert f"--out {tmp_path / 'taken'}: is a file" in _error(capsys)


def test_run_out_below_a_file(tmp_path, capsys, no_model_loading):
    (tmp_path / "taken").write_text("x")
    assert main(QUICK_RUN + ["--out", str(tmp_path / "taken" / "sub")]) == 2
    assert "is a file, not a folder" in _error(capsys)


def test_run_out_where_result_json_is_a_folder(tmp_path, capsys, no_model_loading):
    (tmp_path / "r" / "result.json").mkdir(parents=True)
    assert main(QUICK_RUN + ["--out", str(tmp_path / "r")]) == 2
    assert "result.json is a folder, where genie writes a file" in _error(capsys)


def test_run_out_in_a_read_only_folder(tmp_path, capsys, no_model_loading, monkeypatch):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    real_mkstemp = genie.files.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # root ignores the mode: refuse as a read-only mount would
        if dir is not None and os.path.realpath(dir) == os.path.realpath(locked):
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(genie.files.tempfile, "mkstemp", mkstemp)
    try:
        assert main(QUICK_RUN + ["--out", str(locked / "new")]) == 2
        assert f"folder {locked} is not writable" in _error(capsys)
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_distill_out_is_a_folder(tmp_path, capsys, no_model_loading):
    assert main(["distill", "--out", str(tmp_path), "--device", "cpu"]) == 2
    assert f"--out {tmp_path}: it is a folder; give a file name" in _error(capsys)


def test_distill_out_below_a_file(tmp_path, capsys, no_model_loading):
    (tmp_path / "f").write_text("x")
    assert main(["distill", "--out", str(tmp_path / "f" / "set.pt"), "--device", "cpu"]) == 2
    assert f"{tmp_path / 'f'} is a file, not a folder" in _error(capsys)


def test_distill_checkpoint_dir_is_a_file(tmp_path, capsys, no_model_loading):
    (tmp_path / "ck").write_text("x")
    assert main(["distill", "--out", str(tmp_path / "set.pt"), "--checkpoint-dir", str(tmp_path / "ck"),
                 "--device", "cpu"]) == 2
    assert f"--checkpoint-dir {tmp_path / 'ck'}: is a file" in _error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_sweep_out_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "01_quickstart.ipynb"
    assert main(["sweep", str(notebook), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err and "Traceback" not in err
