"""result.json and the table record what a run used, not what was asked for."""
import json

import pytest

from genie.cli import main
from genie.distill import distill

from faults import QUICK_RUN


@pytest.fixture(scope="module")
def set16(resnet20, tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "16-images.pt"
    distill(resnet20, 32, num_images=16, batch_size=16, iters=2, progress=False,
            model_name="resnet20_cifar10").save(path)
    return path


@pytest.mark.parametrize("samples,used,source", [(None, 16, "(16 images)"), (8, 8, "(first 8 of 16 images)")])
def test_the_calibration_file_decides_the_count(set16, tmp_path, capsys, samples, used, source):
    argv = QUICK_RUN + ["--data", "synthetic", "--calib-file", str(set16), "--out", str(tmp_path)]
    assert main(argv + ([] if samples is None else ["--samples", str(samples)])) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["samples"] == used and result["calib_source"] == f"distilled set {set16} {source}"
    assert f"synthetic, {used} images (distilled set" in capsys.readouterr().out


def test_more_samples_than_the_file_holds_is_an_error(set16, tmp_path, capsys):
    argv = QUICK_RUN + ["--data", "synthetic", "--calib-file", str(set16), "--samples", "1024", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert f"--calib-file {set16} holds 16 images, fewer than --samples 1024: pass --samples 16 or less, or drop " \
           "--samples" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
