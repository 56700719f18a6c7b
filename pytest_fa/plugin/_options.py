"""The plugin's options: generated from the settings dataclasses, resolved from the command
line, then the ini file, then the defaults."""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_fa.core.plot import safe_name
from pytest_fa.core.settings import SessionSettings, SettingError, option_fields
from pytest_fa.core.thresholds import DiagnosticThresholds, threshold_fields
from pytest_fa.errors import as_flags


@dataclass(frozen=True)
class Option:
    """A ``--fa-*`` option and its ini key, generated from one field of the settings."""

    name: str
    field: str
    help: str
    type: Any = str
    default: Any = None
    metavar: str | None = None
    repeat: bool = False
    is_path: bool = False

    @property
    def flag(self) -> str:
        return "--fa-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "fa_" + self.name

    @classmethod
    def of_setting(cls, f: dataclasses.Field) -> Option:
        spec = f.metadata["option"]
        default = None if f.default is dataclasses.MISSING or spec["repeat"] else f.default
        return cls(spec["flag"] or f.name, f.name, spec["help"], spec["type"], default, spec["metavar"],
                   spec["repeat"], spec["path"])

    @classmethod
    def of_threshold(cls, f: dataclasses.Field) -> Option:
        text = isinstance(f.default, str)
        return cls(f.name, f.name, f"{f.metadata['help']} (default {f.default})", type(f.default), None,
                   "RULE" if text else "X")


OPTIONS = tuple(Option.of_setting(f) for f in option_fields())
THRESHOLD_OPTIONS = tuple(Option.of_threshold(f) for f in threshold_fields())


def add_options(parser: pytest.Parser) -> None:
    """Every ``--fa-*`` option (in the ``fa`` group) and its ini key."""
    group = parser.getgroup("fa", "pytest-fa: evaluation protocol for local-credit methods")
    for option in OPTIONS + THRESHOLD_OPTIONS:
        kwargs: dict[str, Any] = {"dest": "fa_" + option.name, "metavar": option.metavar, "help": option.help}
        if option.repeat:
            group.addoption(option.flag, action="append", default=[], **kwargs)
            parser.addini(option.ini, option.help, type="linelist")
        elif option.type is bool:
            kwargs.pop("metavar")
            group.addoption(option.flag, action="store_const", const=True, default=None, **kwargs)
            parser.addini(option.ini, option.help, type="bool", default=False)
        else:
            group.addoption(option.flag, type=option.type, default=None, **kwargs)
            parser.addini(option.ini, option.help, type="string")


def session_settings(config: pytest.Config) -> SessionSettings:
    """The session's settings from the command line and ini; a bad value is a usage error
    that names its option."""
    try:
        thresholds = DiagnosticThresholds().updated(**{o.name: _resolve(config, o) for o in THRESHOLD_OPTIONS})
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"pytest-fa: {as_flags(str(exc))}") from None
    values = {o.field: _resolve(config, o) for o in OPTIONS}
    values.update({o.field: tuple(values[o.field]) for o in OPTIONS if o.repeat})
    try:
        return SessionSettings(thresholds=thresholds, **values)
    except SettingError as exc:
        option = next(o for o in OPTIONS if o.field == exc.name)
        shown = repr(exc.value) if isinstance(exc.value, str) else exc.value
        raise pytest.UsageError(f"{option.flag}={shown}: {as_flags(exc.message)}") from None


def _resolve(config: pytest.Config, option: Option) -> Any:
    """Command line first, then the ini key (paths relative to the ini file), then the default."""
    value = config.getoption("fa_" + option.name)
    if option.repeat:
        if option.is_path:
            return _unique(value or [_ini_path(config, p) for p in config.getini(option.ini)], option.flag)
        return list(dict.fromkeys(value or config.getini(option.ini)))
    if value is not None:
        return value
    raw = config.getini(option.ini)
    if option.type is bool:
        return bool(raw)
    if raw in (None, ""):
        return option.default
    if option.is_path:
        return _ini_path(config, raw)
    try:
        return option.type(raw)
    except ValueError:
        raise pytest.UsageError(f"ini key {option.ini} = {raw!r} is not a valid {option.type.__name__}") from None


def _unique(paths: list[str], flag: str) -> list[str]:
    """The paths in order, each file once however it was spelled (relative, absolute, ``..``);
    a symlink loop is a usage error."""
    seen: dict[Path, str] = {}
    for path in paths:
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise pytest.UsageError(f"{flag}={path} is a symlink loop; give the path of a real file or folder") from None
        seen.setdefault(Path(path).resolve(), path)
    return list(seen.values())


def check_report_paths(settings: SessionSettings) -> None:
    """Fail at start-up, not after the run, when a report file (or the figures' folder) cannot
    be written, or when writing a report would overwrite a checkpoint, the other report or a
    figure: the same file however it is spelled or linked (symlink, hard link)."""
    reports = {"--fa-report-json": settings.report_json, "--fa-report-md": settings.report_md}
    for flag, raw in reports.items():
        check_report_path(raw, flag)
    check_report_path(settings.plot, "--fa-plot", folder=True)
    taken = [(f"--fa-checkpoint={p}", p) for p in settings.checkpoint]
    if settings.plot:
        taken.append((f"--fa-plot={settings.plot}", settings.plot))
        taken += [(f"the --fa-plot figure of {Path(p).name}", str(Path(settings.plot) / f"{safe_name(Path(p).name)}.png"))
                  for p in settings.checkpoint]
    for flag, raw in reports.items():
        if raw is None:
            continue
        for name, other in taken:
            if _same_file(raw, other):
                raise pytest.UsageError(f"{flag}={raw} is also {name}: writing the report would overwrite it; "
                                        "give another path")
        taken.append((f"{flag}={raw}", raw))


def check_report_path(raw: str | None, flag: str, folder: bool = False) -> None:
    """Fail at start-up, not after the run, when a report file (or folder) cannot be written."""
    if raw is None:
        return
    if not raw.strip():
        raise pytest.UsageError(f"{flag}={raw!r} is empty; give the path of a {'folder' if folder else 'file'}")
    path = Path(raw)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise pytest.UsageError(f"{flag}={raw} is a symlink loop; give the path of a {'folder' if folder else 'file'}") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise pytest.UsageError(f"{flag}={raw}: a name in the path is too long for the file system "
                                    f"({exc.strerror}); give a shorter path") from None
    if path.is_dir() and not folder:
        raise pytest.UsageError(f"{flag}={raw} is a folder; give the path of a file inside it")
    if path.exists() and folder and not path.is_dir():
        raise pytest.UsageError(f"{flag}={raw} is a file; give a folder for the figures")
    if path.exists() and not folder and not path.is_file():
        raise pytest.UsageError(f"{flag}={raw} is not a regular file (a FIFO, socket or device); give the path of a file")
    start = path if folder else path.parent
    parent = next((p for p in [start, *start.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"{flag}={raw}: cannot write there ({parent} is not a writable folder)")


def _same_file(a: str, b: str) -> bool:
    """One file: ``os.path.samefile`` when both exist, else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _ini_path(config: pytest.Config, raw: str) -> str:
    path = Path(raw)
    if not path.is_absolute() and config.inipath is not None:
        path = config.inipath.parent / path
    return str(path)
