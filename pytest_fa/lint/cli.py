"""The front end of :mod:`pytest_fa.lint`: which files to check, and the command line."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from pytest_fa.lint.engine import lint_file, registered

__all__ = ["main", "python_files"]


def _skip_dir(path: Path) -> bool:
    name = path.name
    return (name.startswith(".") or name in ("__pycache__", "site-packages")
            or (path / "pyvenv.cfg").is_file())


def python_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The ``*.py`` files under ``paths`` (files named explicitly are taken as they are), sorted,
    without duplicates, skipping hidden folders, ``__pycache__``, virtual environments (a folder
    with ``pyvenv.cfg``) and ``site-packages``. A path that does not exist is a FileNotFoundError,
    a ``.py`` symlink loop an OSError that names it."""
    found: dict[Path, Path] = {}
    for raw in paths:
        root = Path(raw)
        if root.is_file():
            found.setdefault(root.resolve(), root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"no such file or folder: {root}")
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not _skip_dir(here / d))
            for name in files:
                if name.endswith(".py") and not name.startswith("."):
                    file = here / name
                    if _loops(file):
                        raise OSError(f"{file} is a symlink loop; remove the link or lint another folder")
                    found.setdefault(file.resolve(), file)
    return sorted(found.values())


def _loops(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def main(argv: list[str] | None = None) -> int:
    """``python -m pytest_fa.lint PATH...``: 0 clean, 1 findings, 2 usage error / missing path."""
    codes = ", ".join(f"{rule.code} {rule.label}" for rule in registered())
    parser = argparse.ArgumentParser(
        prog="python -m pytest_fa.lint",
        description=f"Check Python sources for the source-level pitfalls of FA/DFA evaluations ({codes}).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to check")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 2
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        for p in missing:
            print(f"fa-lint: error: no such file or folder: {p}", file=sys.stderr)
        return 2
    try:
        files = python_files(args.paths)
    except OSError as exc:
        print(f"fa-lint: error: {exc}", file=sys.stderr)
        return 2
    findings = [f for file in files for f in lint_file(file)]
    for finding in findings:
        print(finding)
    dirty = len({f.path for f in findings})
    print(f"fa-lint: {len(findings)} finding(s) in {dirty} of {len(files)} file(s)", file=sys.stderr)
    return 1 if findings else 0
