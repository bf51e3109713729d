"""Every output path is checked before any model is loaded: exit status 2 and one line."""
import os
from pathlib import Path

import genie.files

from faults import QUICK_RUN, cli_error


def test_run_out_is_an_existing_file(tmp_path, capsys, no_model_loading):
    (tmp_path / "taken").write_text("x")
    err = cli_error(QUICK_RUN + ["--out", str(tmp_path / "taken")], capsys)
    assert f"--out {tmp_path / 'taken'}: is a file" in err


def test_run_out_below_a_file(tmp_path, capsys, no_model_loading):
    (tmp_path / "taken").write_text("x")
    err = cli_error(QUICK_RUN + ["--out", str(tmp_path / "taken" / "sub")], capsys)
    assert "is a file, not a folder" in err


def test_run_out_where_result_json_is_a_folder(tmp_path, capsys, no_model_loading):
    (tmp_path / "r" / "result.json").mkdir(parents=True)
    err = cli_error(QUICK_RUN + ["--out", str(tmp_path / "r")], capsys)
    assert "result.json is a folder, where genie writes a file" in err


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
        err = cli_error(QUICK_RUN + ["--out", str(locked / "new")], capsys)
        assert f"folder {locked} is not writable" in err
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_distill_out_is_a_folder(tmp_path, capsys, no_model_loading):
    err = cli_error(["distill", "--out", str(tmp_path), "--device", "cpu"], capsys)
    assert f"--out {tmp_path}: it is a folder; give a file name" in err


def test_distill_out_below_a_file(tmp_path, capsys, no_model_loading):
    (tmp_path / "f").write_text("x")
    err = cli_error(["distill", "--out", str(tmp_path / "f" / "set.pt"), "--device", "cpu"], capsys)
    assert f"{tmp_path / 'f'} is a file, not a folder" in err


def test_distill_checkpoint_dir_is_a_file(tmp_path, capsys, no_model_loading):
    (tmp_path / "ck").write_text("x")
    err = cli_error(["distill", "--out", str(tmp_path / "set.pt"), "--checkpoint-dir", str(tmp_path / "ck"),
                     "--device", "cpu"], capsys)
    assert f"--checkpoint-dir {tmp_path / 'ck'}: is a file" in err
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_sweep_out_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "01_quickstart.ipynb"
    err = cli_error(["sweep", str(notebook), "--out", str(tmp_path / "taken")], capsys, prog="genie sweep")
    assert "--out" in err and "is a file" in err
