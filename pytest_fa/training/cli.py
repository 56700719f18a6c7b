"""``fa-train``: every argument is checked before torch is imported, then
:func:`pytest_fa.training.trainer.run` trains. The registries' names are written out here (reading
them imports torch); tests/test_fa_train_cli.py checks that they agree.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_fa.core.settings import SettingError, resolve_device
from pytest_fa.training import DEFAULT_EPOCHS

DATASETS = ("mnist1d", "fashion-mnist", "cifar10", "cifar100", "synthetic")
#: each architecture's parameters among ``d`` (``--width``) and ``depth`` (``--depth``)
ARCH_PARAMETERS = {
    "resmlp": ("d", "depth"), "smallcnn": ("depth",), "studentnet": ("d", "depth"), "vit-mini": ("d", "depth"),
}
METHODS = ("bp", "credit_bridge", "dfa", "ep", "fa", "frozen", "state_bridge")
DEFAULT_SEEDS = (42,)


def _whole(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` (up to ``maximum``)."""
    bound = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"got {text!r}; use a whole number {bound}")
        return value

    return parse


def _penalty(text: str) -> float:
    """An argparse type: a finite number ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"got {text!r}; use a finite number, 0 or more (the scale penalty λ)")
    return value


def _method(name: str) -> str:
    """An argparse type: a registered method's name."""
    if name not in METHODS:
        raise argparse.ArgumentTypeError(
            f"unknown method {name!r}; fa-train knows {', '.join(METHODS)}. To train your "
            "own, subclass pytest_fa.training.methods.LocalCreditMethod, register it with "
            "pytest_fa.training.methods.register and call pytest_fa.training.trainer.train"
        )
    return name


def _device(text: str) -> str:
    """An argparse type: a device name :func:`~pytest_fa.core.settings.resolve_device` takes."""
    try:
        resolve_device(text, check_only=True)
    except SettingError as exc:
        raise argparse.ArgumentTypeError(f"got {text!r}; {exc.message}") from None
    return text


def _data_root(text: str) -> str:
    """An argparse type: an existing folder this process can read."""
    path = Path(text).expanduser()
    if not (path.is_dir() and os.access(path, os.R_OK | os.X_OK)):
        raise argparse.ArgumentTypeError(f"{text} is not a folder you can read; pass the folder that holds the data set files")
    return text


def _out(text: str) -> Path:
    """An argparse type: a folder that exists or can be created, and can be written to (tried with a
    temporary file in it or its nearest existing parent, so a refused run leaves nothing behind)."""
    path = Path(text).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise argparse.ArgumentTypeError(f"{text} {where}; pass a folder for the bundles")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".fa-train-"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot create files in {existing} ({exc.strerror}); pass a folder you can write to") from None
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fa-train", description="Train reference models and write pytest-fa checkpoint bundles.")
    parser.add_argument("--data", default="mnist1d", choices=DATASETS, help="data set (default mnist1d)")
    parser.add_argument("--data-root", type=_data_root, default=None, help="folder holding the data set files")
    parser.add_argument("--num-samples", type=_whole(1), default=None, help="mnist1d/synthetic: samples to generate")
    parser.add_argument("--methods", type=_method, nargs="+", default=["bp", "dfa"], help="methods to train (default: bp dfa)")
    parser.add_argument("--arch", default="resmlp", choices=sorted(ARCH_PARAMETERS), help="architecture (default resmlp)")
    parser.add_argument("--width", type=_whole(1), default=None, help="model width d (resmlp, vit-mini, studentnet)")
    parser.add_argument("--depth", type=_whole(1), default=None, help="number of residual blocks L")
    parser.add_argument("--epochs", type=_whole(1), default=DEFAULT_EPOCHS)
    parser.add_argument("--seeds", type=_whole(0, 2**32 - 1), nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--penalty", type=_penalty, default=None, help="DFA scale penalty λ (default 0)")
    parser.add_argument("--device", type=_device, default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--out", type=_out, default="runs", help="output folder for <method>_s<seed>.pt bundles")
    parser.add_argument("--stop-at-floor", action="store_true", help="stop at the first epoch whose monitored ‖g_L‖ "
                        "(restated at batch 128) is below the (b) floor; --epochs stays the planned schedule, and the "
                        "bundle records both")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    return parser


def _arch_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, int]:
    """``--width`` and ``--depth`` as the architecture's ``d`` and ``depth``; refused for an
    architecture that has no such parameter."""
    config = {}
    for flag, key, value in (("--width", "d", args.width), ("--depth", "depth", args.depth)):
        if value is None:
            continue
        if key not in ARCH_PARAMETERS[args.arch]:
            takes = [name for name, keys in ARCH_PARAMETERS.items() if key in keys]
            parser.error(f"{flag}: {args.arch} has no parameter {key}; drop {flag} or pick an --arch that has one ({', '.join(takes)})")
        config[key] = value
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Check every argument before any data is read, then load the data and build the model
    once on its shape before any training: each refusal is one usage error (exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.penalty is not None and "dfa" not in args.methods:
        parser.error("--penalty: only dfa takes the scale penalty here; add dfa to --methods or drop --penalty")
    if args.num_samples is not None and args.data not in ("mnist1d", "synthetic"):
        parser.error(f"--num-samples: {args.data} is read whole, only mnist1d and synthetic are generated; drop --num-samples")
    arch_config = _arch_config(parser, args)
    from pytest_fa.training.trainer import run  # torch from here on

    return run(parser, args, arch_config)


if __name__ == "__main__":
    sys.exit(main())
