"""Command line: clear errors for bad input, exit status 2, no traceback."""
import pytest

from genie.cli import main


@pytest.mark.parametrize("argv,message", [
    (["run", "--model", "resnet21"], "unknown model 'resnet21'"),
    (["run", "--w-bits", "9", "--device", "cpu"], "--w-bits must be an integer from 2 to 8"),
    (["run", "--a-bits", "1", "--device", "cpu"], "--a-bits must be an integer from 2 to 8"),
    (["run", "--samples", "0", "--device", "cpu"], "--samples must be positive"),
    (["run", "--model", "resnet18", "--device", "cpu"], "pass --data-dir"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genie: error: ") and message in err and "Traceback" not in err


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet20_cifar10" in out and "mobilenet_v2" in out
