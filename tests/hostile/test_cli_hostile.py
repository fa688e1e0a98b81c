"""The command line under bad input and interrupts: exit 2 and one line for a user error, --debug for the
traceback, Ctrl-C during a save leaves no temp file and no traceback."""

from __future__ import annotations

import pytest

import hdkd.io
from hdkd.cli import main

QUICK = ["--epochs", "1", "--max-per-class", "4", "--img-size", "32", "--workers", "0", "--no-progress"]


def _run(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "train.epochs=ten"], "train.epochs: expected an integer, got 'ten'"),
        (["--batch-size", "0"], "train.batch_size: expected >= 1, got 0"),
        (["--seed", "-1"], "train.seed: expected an integer in [0, 2**32), got -1"),
        (["--set", "train.select_metric=auc"], "train.select_metric: unknown 'auc'; choose accuracy"),
        (["--set", "train.=1"], "is not a dotted option name"),
        (["--img-size", "40"], "model.img_size: 40 is not a multiple of"),
    ],
)
def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, err = _run(capsys, "train", "student", "-o", str(tmp_path / "out"), *QUICK, *args)
    assert code == 2 and err.startswith("hdkd: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_argparse_errors_stay_argparse_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "student", "--epochs", "ten"])
    assert info.value.code == 2 and "invalid int value: 'ten'" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    from hdkd.errors import ConfigError

    for position in (["--debug", "train", "student"], ["train", "student", "--debug"]):
        with pytest.raises(ConfigError, match="train.batch_size"):
            main([*position, "-o", str(tmp_path / "o"), *QUICK, "--batch-size", "0"])


def test_an_unwritable_output_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    code, err = _run(capsys, "train", "teacher", "-o", str(tmp_path / "taken" / "run"), *QUICK)
    assert code == 2 and "is a file" in err and err.count("\n") == 1


def test_ctrl_c_while_a_checkpoint_is_written_leaves_no_temp_file_and_no_traceback(tmp_path, capsys, monkeypatch):
    import hdkd.models.checkpoint as checkpoint

    def interrupted_write(path, write):
        if path.name != "last.safetensors":
            return hdkd.io.atomic_write(path, write)

        def half_then_ctrl_c(handle):
            handle.write(b"half a checkpoint")
            raise KeyboardInterrupt

        return hdkd.io.atomic_write(path, half_then_ctrl_c)

    monkeypatch.setattr(checkpoint, "atomic_write", interrupted_write)
    out = tmp_path / "out"
    code, err = _run(capsys, "train", "teacher", "-o", str(out), *QUICK)
    assert code == 130 and err.startswith("hdkd: interrupted") and "Traceback" not in err
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert (out / "best.safetensors").is_file() and not (out / "last.safetensors").exists()
