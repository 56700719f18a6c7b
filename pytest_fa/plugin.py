"""pytest entry point: options, the ``fa_protocol`` marker, generated protocol items,
the terminal table and the JSON report. torch is imported only once a checkpoint is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("pytest_fa.assertions", "pytest_fa.pitfalls")

from . import __version__, registry  # noqa: E402
from .fixtures import (  # noqa: E402,F401
    fa_checkpoint,
    fa_checkpoint_path,
    fa_eval_batches,
    fa_feedback_matrices,
    fa_frozen_baseline,
    fa_model,
    fa_report,
    fa_runner,
    fa_thresholds,
)
from .pitfalls import HERE as PITFALLS_DIR  # noqa: E402
from .errors import as_flags  # noqa: E402
from .settings import SessionSettings, SettingError, option_fields  # noqa: E402
from .state import STATE_KEY, FAState  # noqa: E402
from .thresholds import DiagnosticThresholds, threshold_fields  # noqa: E402



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


def pytest_addoption(parser: pytest.Parser) -> None:
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


def _resolve(config: pytest.Config, option: Option) -> Any:
    """Command line first, then the ini key (paths relative to the ini file), then the default."""
    value = config.getoption("fa_" + option.name)
    if option.repeat:
        paths = value or [_ini_path(config, p) for p in config.getini(option.ini)]
        return _unique(paths) if option.is_path else list(dict.fromkeys(paths))
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


def _unique(paths: list[str]) -> list[str]:
    """The paths in order, each file once however it was spelled (relative, absolute, ``..``)."""
    seen: dict[Path, str] = {}
    for path in paths:
        seen.setdefault(Path(path).resolve(), path)
    return list(seen.values())


def _check_report_path(raw: str | None, flag: str, folder: bool = False) -> None:
    """Fail at start-up, not after the run, when a report file (or folder) cannot be written."""
    if raw is None:
        return
    path = Path(raw)
    if path.is_dir() and not folder:
        raise pytest.UsageError(f"{flag}={raw} is a folder; give the path of a file inside it")
    if path.exists() and folder and not path.is_dir():
        raise pytest.UsageError(f"{flag}={raw} is a file; give a folder for the figures")
    start = path if folder else path.parent
    parent = next((p for p in [start, *start.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise pytest.UsageError(f"{flag}={raw}: cannot write there ({parent} is not a writable folder)")


def _ini_path(config: pytest.Config, raw: str) -> str:
    path = Path(raw)
    if not path.is_absolute() and config.inipath is not None:
        path = config.inipath.parent / path
    return str(path)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fa_protocol(**thresholds): a test of the pytest-fa protocol; skipped without "
        "--fa-checkpoint; keyword arguments override thresholds "
        "(" + ", ".join(f.name for f in threshold_fields()) + ")",
    )
    config.addinivalue_line(
        "markers", "fa_pitfall(id): a test of the pitfall regression suite that pins pitfall `id`"
    )
    settings = _settings(config)
    for root in settings.lint:
        if not Path(root).exists():
            raise pytest.UsageError(f"--fa-lint={root}: no such file or folder")
    for name in ("report_json", "report_md", "plot"):
        _check_report_path(getattr(settings, name), "--fa-" + name.replace("_", "-"), folder=name == "plot")
    state = config.stash[STATE_KEY] = FAState(config, settings)
    state.load_saved_report()
    config.pluginmanager.register(SessionHooks(state), "fa-session")
    if settings.pitfalls:
        from .pitfalls import fixtures as pitfall_fixtures

        config.pluginmanager.register(pitfall_fixtures, "fa-pitfalls")
        _add_collection_root(config, PITFALLS_DIR)


def _settings(config: pytest.Config) -> SessionSettings:
    """The session's settings from the command line and ini; a bad value is a usage error
    that names its option."""
    try:
        thresholds = DiagnosticThresholds().updated(**{o.name: _resolve(config, o) for o in THRESHOLD_OPTIONS})
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"pytest-fa: {exc}") from None
    values = {o.field: _resolve(config, o) for o in OPTIONS}
    values.update({o.field: tuple(values[o.field]) for o in OPTIONS if o.repeat})
    try:
        return SessionSettings(thresholds=thresholds, **values)
    except SettingError as exc:
        option = next(o for o in OPTIONS if o.field == exc.name)
        shown = repr(exc.value) if isinstance(exc.value, str) else exc.value
        raise pytest.UsageError(f"{option.flag}={shown}: {as_flags(exc.message)}") from None


def _add_collection_root(config: pytest.Config, path: Path) -> None:
    """Collect ``path`` too: alone when the command line named no paths of its own, not at
    all when it already named something inside ``path``."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [str(path)]
        return
    named = [Path(a.split("::")[0]).resolve() for a in config.args]
    if not any(p == path or path in p.parents for p in named):
        config.args.append(str(path))


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.parent == PITFALLS_DIR and file_path.name.startswith("pitfall_") and file_path.suffix == ".py":
        # a path named on the command line is collected by pytest's python plugin already
        if parent.config.stash[STATE_KEY].settings.pitfalls and not parent.session.isinitpath(file_path):
            return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    state = metafunc.config.stash[STATE_KEY]
    if "fa_checkpoint_path" in metafunc.fixturenames and state.checkpoints:
        names = [Path(p).name for p in state.checkpoints]
        ids = names if len(set(names)) == len(names) else state.checkpoints
        metafunc.parametrize("fa_checkpoint_path", state.checkpoints, indirect=True, ids=ids, scope="session")


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("fa_protocol")
    if marker is None:
        return
    state = item.config.stash[STATE_KEY]
    state.check_marker(marker)
    if not state.checkpoints:
        pytest.skip("fa_protocol: no checkpoint given; pass --fa-checkpoint=PATH")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE_KEY]
    for root in dict.fromkeys(Path(r).resolve() for r in state.settings.lint):
        name = f"fa-lint[{root}]"
        items.extend(_collected(LintCollector.from_parent(session, name=name, nodeid=name, path=root)))
    unreadable = state.unreadable_checkpoints() if state.checkpoints else []
    first: list[pytest.Item] = []
    for path in state.checkpoints:
        name = f"fa-protocol[{path}]"
        collector = ProtocolCollector.from_parent(session, name=name, nodeid=name, path=Path(path).resolve())
        collector.checkpoint = path
        # a file that cannot be read fails first, before any other checkpoint trains a baseline
        (first if path in unreadable else items).extend(_collected(collector))
    items[:0] = first


def _collected(collector: pytest.Collector) -> list[pytest.Item]:
    """Collect through pytest's hooks, so the items are counted and reported like any others."""
    report = collector.ihook.pytest_make_collect_report(collector=collector)
    collector.ihook.pytest_collectreport(report=report)
    return [node for node in report.result if isinstance(node, pytest.Item)]


class ProtocolCollector(pytest.Collector):
    """The protocol items of one checkpoint: one per diagnostic."""

    checkpoint: str = ""

    def collect(self):
        items: list[ProtocolItem] = []
        for diagnostic in registry.DIAGNOSTICS:
            item = ProtocolItem.from_parent(self, name=diagnostic.item)
            item.key = diagnostic.key
            item.add_marker("fa_protocol")
            items.append(item)
        if self.config.stash[STATE_KEY].saved is not None:
            items.append(CompareItem.from_parent(self, name="compare"))
        if self.config.pluginmanager.hasplugin("xdist"):
            # under `pytest -n N --dist loadgroup` one worker diagnoses each checkpoint
            for item in items:
                item.add_marker(pytest.mark.xdist_group(name=self.checkpoint))
        return items


class ProtocolFailure(Exception):
    """A diagnostic fired."""


class ProtocolItem(pytest.Item):
    key: str = ""

    @property
    def checkpoint(self) -> str:
        return self.parent.checkpoint

    def runtest(self) -> None:
        from .render import MEANING, comparison, status

        report = self.config.stash[STATE_KEY].report(self.checkpoint)
        result = report.diagnostics[self.key]
        self.user_properties.append(("fa_value", result.value))
        if result.fires and self.key in registry.walk_back_keys():
            layer = "" if result.layer is None else f" at {'block' if self.key == 'a' else 'layer'} {result.layer}"
            raise ProtocolFailure(as_flags(
                f"({self.key}) {result.name} fires on {self.checkpoint}{layer}: {comparison(result)}\n"
                f"    {result.detail}\n"
                f"    meaning: {MEANING[self.key]}\n"
                f"    verdict: {report.verdict}"
            ))
        if not result.evaluated:
            raise ProtocolFailure(as_flags(f"({self.key}) {result.name}: {result.detail}"))
        self.add_report_section("call", "fa", f"({self.key}) {result.name}: {comparison(result)} — {status(result)}")

    def repr_failure(self, excinfo, style=None):
        from .errors import FAError

        if isinstance(excinfo.value, ProtocolFailure):
            return str(excinfo.value)
        if isinstance(excinfo.value, FAError):
            return f"pytest-fa cannot diagnose {self.checkpoint}: {as_flags(str(excinfo.value))}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"fa-protocol[{self.checkpoint}]::{self.name}"


class CompareItem(ProtocolItem):
    """This checkpoint against its report in the ``--fa-compare`` file."""

    def runtest(self) -> None:
        state = self.config.stash[STATE_KEY]
        comparison = state.compare(self.checkpoint)
        if comparison is None:
            pytest.skip(f"{self.checkpoint} is not in {state.settings.compare}: nothing to compare")
        if comparison.failed:
            raise ProtocolFailure(comparison.summary())
        self.add_report_section("call", "fa", comparison.summary())


class LintCollector(pytest.Collector):
    """One item per Python file under a ``--fa-lint`` path."""

    def collect(self):
        from .lint import python_files

        for file in python_files([self.path]):
            yield LintItem.from_parent(self, name=str(file), path=file)


class LintFindings(Exception):
    """Source-level pitfalls found in one file."""


class LintItem(pytest.Item):
    def runtest(self) -> None:
        from .lint import lint_file

        findings = lint_file(self.path)
        if findings:
            raise LintFindings("\n".join(str(f) for f in findings))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, LintFindings):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"fa-lint {self.path}"


PITFALL_PROPERTY = "fa_pitfall"
WORKER_REPORTS = "fa_reports"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    marker = item.get_closest_marker("fa_pitfall")
    if marker is not None and (report.when == "call" or not report.passed):
        checks_checkpoint = "fa_checkpoint_path" in getattr(item, "fixturenames", ())
        # carried on the report, so it reaches the pytest-xdist controller too
        report.user_properties.append((PITFALL_PROPERTY, [marker.args[0], checks_checkpoint]))
    return report


class SessionHooks:
    """Hooks that read reports into the session's state: pitfall outcomes from every test
    report, and the protocol reports that pytest-xdist workers computed."""

    def __init__(self, state: FAState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for name, value in report.user_properties:
            if name == PITFALL_PROPERTY:
                pitfall_id, checks_checkpoint = value
                self.state.record_pitfall(pitfall_id, checks_checkpoint, report.outcome)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        self.state.add_worker_reports(node.workeroutput.get(WORKER_REPORTS, []))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is not None and state.pitfall_outcomes:
        from .render import pitfall_table

        terminalreporter.section("pytest-fa pitfalls")
        terminalreporter.write_line(as_flags(pitfall_table(state.pitfall_outcomes)))
    if state is None or not state.reports():
        return
    from .render import summary_table

    from .seeds import seed_groups

    terminalreporter.section("pytest-fa protocol")
    reports = state.reports()
    terminalreporter.write_line(summary_table(reports))
    groups = seed_groups(reports)
    if groups:
        from .render import seed_table

        terminalreporter.write_line("\nseeds of one configuration (mean ± sd):")
        terminalreporter.write_line(seed_table(groups))
    for report in reports:
        terminalreporter.write_line("")
        terminalreporter.write_line(as_flags(str(report)))
    comparisons = state.comparisons()
    if comparisons:
        from .compare import comparison_table

        terminalreporter.section(f"pytest-fa compare with {state.settings.compare}")
        terminalreporter.write_line(comparison_table(comparisons))
    if state.report_json:
        terminalreporter.write_line(f"\nJSON report: {state.report_json}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or not state.reports():
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller writes the files
        workeroutput[WORKER_REPORTS] = state.local_report_dicts()
        return
    reports = state.reports()
    if state.settings.report_md:
        from .markdown import markdown_report

        path = Path(state.settings.report_md)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(as_flags(markdown_report(reports, __version__)), encoding="utf-8")
    if state.settings.plot:
        from .plot import write_report_plots

        write_report_plots(reports, state.settings.plot)
    if not state.report_json:
        return
    from .seeds import seed_groups

    payload = {
        "pytest_fa": __version__,
        "reports": [report.to_dict() for report in reports],
        "seed_groups": [group.to_dict() for group in seed_groups(reports)],
    }
    path = Path(state.report_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
