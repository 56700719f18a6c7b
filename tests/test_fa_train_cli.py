"""fa-train refuses every bad argument with one usage error (exit status 2, no traceback)
that names the argument and says what to do, before any data is read or any training starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_fa.training import cli, trainer

# (bad arguments, the argument the message names, what the message tells the user)
REFUSED_BEFORE_ANY_DATA = [
    (["--out", "{file}"], "argument --out", "is a file; pass a folder for the bundles"),
    (["--out", "{file}/sub"], "argument --out", "lies under the file {file}; pass a folder"),
    (["--out", "/proc/x"], "argument --out", "cannot create files in /proc"),
    (["--width", "0"], "argument --width", "got '0'; use a whole number 1 or more"),
    (["--depth", "0"], "argument --depth", "got '0'; use a whole number 1 or more"),
    (["--methods", "bp", "foo"], "argument --methods", "unknown method 'foo'; fa-train knows bp,"),
    (["--epochs", "0"], "argument --epochs", "got '0'; use a whole number 1 or more"),
    (["--epochs", "-1"], "argument --epochs", "got '-1'; use a whole number 1 or more"),
    (["--epochs", "2.5"], "argument --epochs", "got '2.5'; use a whole number 1 or more"),
    (["--seeds", "1", "abc"], "argument --seeds", "got 'abc'; use a whole number from 0 to"),
    (["--seeds", "-1"], "argument --seeds", "got '-1'; use a whole number from 0 to"),
    (["--seeds", str(10**30)], "argument --seeds", "use a whole number from 0 to 4294967295"),
    (["--penalty", "nan"], "argument --penalty", "got 'nan'; use a finite number, 0 or more"),
    (["--penalty", "-0.1"], "argument --penalty", "got '-0.1'; use a finite number, 0 or more"),
    (["--penalty", "inf"], "argument --penalty", "got 'inf'; use a finite number, 0 or more"),
    (["--device", "cudax"], "argument --device", "got 'cudax'; use auto, cpu or cuda"),
    (["--arch", "nope"], "argument --arch", "invalid choice: 'nope' (choose from"),
    (["--data", "nope"], "argument --data", "invalid choice: 'nope' (choose from"),
    (["--data-root", "/nonexistent"], "argument --data-root", "/nonexistent is not a folder you can read; pass"),
    (["--data-root", "{file}"], "argument --data-root", "is not a folder you can read; pass"),
    (["--num-samples", "0"], "argument --num-samples", "got '0'; use a whole number 1 or more"),
    (["--arch", "smallcnn", "--width", "8"], "--width: smallcnn has no parameter d",
     "drop --width or pick an --arch that has one (resmlp"),
    (["--data", "cifar10", "--num-samples", "10"], "--num-samples: cifar10 is read whole", "drop --num-samples"),
    (["--penalty", "0.1", "--methods", "bp"], "--penalty: only dfa", "add dfa to --methods or drop --penalty"),
]


def went_on(*args, **kwargs):
    raise AssertionError("fa-train went on past a bad argument")


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(trainer, "train", went_on)


@pytest.fixture
def nothing_runs(monkeypatch, no_training):
    """Loading data or training fails the test."""
    monkeypatch.setattr(trainer, "load_dataset", went_on)


def refuse(argv, tmp_path, capsys) -> str:
    """Run fa-train with ``argv`` after a valid ``--out``; return its error output once it has
    exited with status 2, leaving ``tmp_path`` as it was."""
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as info:
        cli.main(["--out", str(tmp_path / "runs"), "--quiet", *argv])
    captured = capsys.readouterr()
    assert info.value.code == 2, captured
    assert sorted(tmp_path.rglob("*")) == before  # no output folder, bundle or probe file left
    assert "Traceback" not in captured.err and captured.err.startswith("usage: fa-train")
    return captured.err


@pytest.mark.parametrize(
    "argv, names, advice", REFUSED_BEFORE_ANY_DATA, ids=[" ".join(argv) for argv, _, _ in REFUSED_BEFORE_ANY_DATA]
)
def test_a_bad_argument_is_refused_before_any_data_or_training(
    argv, names, advice, tmp_path, capsys, nothing_runs
):
    file = tmp_path / "afile"
    file.write_text("not a folder")
    argv = [arg.format(file=file) for arg in argv]
    err = refuse(argv, tmp_path, capsys)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fa-train: error: {names}"), err
    assert advice.format(file=file) in last, err


def test_an_unknown_method_is_told_how_to_register_one(tmp_path, capsys, nothing_runs):
    err = refuse(["--methods", "foo"], tmp_path, capsys)
    assert "bp, credit_bridge, dfa, ep, fa, frozen, state_bridge" in err
    assert "register it with pytest_fa.training.methods.register" in err
    assert "setting `" not in err and "--credit" not in err


def test_a_data_error_names_the_flag_of_fa_train(tmp_path, capsys, no_training):
    err = refuse(["--data", "cifar10"], tmp_path, capsys)
    assert "cifar10 needs a data root: pass --data-root=<folder containing cifar-10-batches-py>" in err
    assert "setting `" not in err and "--fa-" not in err


def test_a_model_the_data_cannot_build_is_refused_before_training(tmp_path, capsys, no_training):
    err = refuse(["--data", "synthetic", "--num-samples", "100", "--arch", "vit-mini", "--width", "6"],
                 tmp_path, capsys)
    assert "--arch vit-mini does not fit synthetic" in err and "embed_dim must be divisible by num_heads" in err
    assert "change --width or --depth, or pick another --arch" in err


def test_the_command_refuses_without_a_traceback(tmp_path, module="pytest_fa.training.cli"):
    file = tmp_path / "afile"
    file.write_text("not a folder")
    run = subprocess.run(
        [sys.executable, "-m", module, "--out", str(file), "--epochs", "1"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert run.stderr.strip().splitlines()[-1] == (
        f"fa-train: error: argument --out: {file} is a file; pass a folder for the bundles"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


REFUSAL_IMPORTS = """
import sys
from pytest_fa.training.cli import main
for argv in {cases!r}:
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code == 2, (argv, exit.code)
    else:
        raise AssertionError(argv)
print(sorted(name for name in ("torch", "numpy") if name in sys.modules))
"""


def test_a_refusal_imports_no_torch(tmp_path):
    """A bad argument is refused before torch is imported: the refusal costs a Python start-up
    (0.07-0.09 s here), not a torch import (1.3-1.7 s)."""
    cases = [["--out", str(tmp_path / "runs"), *argv] for argv, _, _ in REFUSED_BEFORE_ANY_DATA
             if not any("{file}" in arg for arg in argv)]
    run = subprocess.run([sys.executable, "-c", REFUSAL_IMPORTS.format(cases=cases)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == "[]", run.stdout[-500:]


def test_the_command_line_knows_the_registries_names():
    """The names fa-train checks before importing torch are the registries' own."""
    import inspect

    from pytest_fa.models import ARCHITECTURES
    from pytest_fa.training import data
    from pytest_fa.training.methods import METHODS

    assert cli.DATASETS == data.DATASETS
    assert cli.METHODS == tuple(sorted(METHODS))
    assert cli.ARCH_PARAMETERS == {
        name: tuple(p for p in ("d", "depth") if p in inspect.signature(cls).parameters)
        for name, cls in sorted(ARCHITECTURES.items())
    }
    assert trainer.DEFAULT_EPOCHS == cli.DEFAULT_EPOCHS
