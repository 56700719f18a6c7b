"""pytest entry point: options, the ``fa_protocol`` marker, generated protocol items,
the terminal table and the JSON report. torch is imported only once a checkpoint is used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("pytest_fa.assertions", "pytest_fa.pitfalls")

from . import __version__  # noqa: E402
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
from .state import STATE_KEY, FAState, threshold_fields  # noqa: E402

WALK_BACK_KEYS = ("a", "b", "d")

ITEMS = (
    ("a", "residual_growth"),
    ("b", "grad_floor"),
    ("c", "direction_stability"),
    ("d", "frozen_margin"),
)


@dataclass(frozen=True)
class Option:
    name: str
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


OPTIONS = (
    Option("checkpoint", "checkpoint to diagnose: a pytest-fa bundle, or a state dict with "
           "--fa-model (repeatable; ini: one per line)", metavar="PATH", repeat=True, is_path=True),
    Option("model", "factory for a custom architecture, package.module:build", metavar="SPEC"),
    Option("hidden", "adapt a model without return_hidden: module paths or patterns of the states "
           "h_0, h_1, ..., h_L, comma-separated (e.g. 'embed,blocks.*'), read by forward hooks", metavar="PATTERNS"),
    Option("block_output", "with --fa-hidden: the named blocks return h + f(h) (sum), only f(h) "
           "(branch), or auto (read from the forward pass, the default)", default="auto", metavar="KIND"),
    Option("pooling", "with --fa-hidden: read token states (B, T, d) at the cls token (cls, the "
           "default) or as the mean over tokens (mean)", default="cls", metavar="KIND"),
    Option("credit", "your method's credit signal for Γ: package.module:make_credit, called as "
           "make_credit(model, checkpoint) -> credit(x, y, logits, hiddens) -> [a_0, ..., a_L]", metavar="SPEC"),
    Option("data", "data set when the checkpoint does not record one: mnist1d, fashion-mnist, "
           "cifar10, cifar100, synthetic", metavar="NAME"),
    Option("data_root", "folder holding the data set files (CIFAR, Fashion-MNIST)", metavar="DIR", is_path=True),
    Option("device", "auto (default), cpu or cuda[:N]", default="auto", metavar="DEVICE"),
    Option("eval_batches", "number K of disjoint eval batches (default 8, at least 8)", int, 8, "K"),
    Option("batch_size", "eval batch size B (default 128, the paper's)", int, 128, "B"),
    Option("frozen_acc", "accuracy of your frozen-blocks control; skips training one", float, None, "ACC"),
    Option("frozen_epochs", "train budget of the frozen baseline for a plain state dict", int, None, "N"),
    Option("report_json", "write every protocol report to this JSON file", str, None, "PATH", is_path=True),
    Option("report_md", "write the filled reporting template (Markdown) of every checkpoint to this file",
           str, None, "PATH", is_path=True),
    Option("plot", "write one PNG per checkpoint into this folder: per-layer ‖h_l‖ and ‖g_l‖ against "
           "the floor, Γ_l against the null band", str, None, "DIR", is_path=True),
    Option("compare", "compare with a saved --fa-report-json file: one `compare` item per checkpoint "
           "fails when a diagnostic crossed its threshold or a figure regressed beyond --fa-compare-fail",
           str, None, "PATH", is_path=True),
    Option("compare_fail", "tolerance of one figure for --fa-compare (repeatable), e.g. headline_acc:1pp, "
           "deep_gamma:0.05, growth:20%%, grad_ref:10x", metavar="SPEC", repeat=True),
    Option("pitfalls", "run the shipped pitfall regression suite (with --fa-checkpoint: also "
           "check that checkpoint for exposure)", bool, False),
    Option("lint", "scan Python sources under PATH for source-level pitfalls (repeatable)",
           metavar="PATH", repeat=True, is_path=True),
)


THRESHOLD_HELP = {
    "b_rule": "rule for (b): decomposed (default: fires when ‖g_L‖ is at the floor because the "
    "backward gain collapsed, reports error-saturated when the error vanished instead) or paper "
    "(the reference implementation: the floor alone)",
    "gain_floor": "(b) under the decomposed rule: Mode 1 when the median backward gain "
    "‖g_L‖ / ‖dCE/dlogits‖ is below this",
}


def _threshold_options() -> tuple[Option, ...]:
    return tuple(
        Option(
            f.name,
            THRESHOLD_HELP.get(f.name, f"threshold {f.name}") + f" (default {f.default})",
            type(f.default), None, "RULE" if isinstance(f.default, str) else "X",
        )
        for f in threshold_fields()
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fa", "pytest-fa: evaluation protocol for local-credit methods")
    for option in OPTIONS + _threshold_options():
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
    values = {o.name: _resolve(config, o) for o in OPTIONS + _threshold_options()}
    for root in values["lint"]:
        if not Path(root).exists():
            raise pytest.UsageError(f"--fa-lint={root}: no such file or folder")
    for name in ("report_json", "report_md", "plot"):
        _check_report_path(values[name], "--fa-" + name.replace("_", "-"), folder=name == "plot")
    state = config.stash[STATE_KEY] = FAState.from_options(config, values)
    state.load_saved_report()
    config.pluginmanager.register(SessionHooks(state), "fa-session")
    if state.values["pitfalls"]:
        from .pitfalls import fixtures as pitfall_fixtures

        config.pluginmanager.register(pitfall_fixtures, "fa-pitfalls")
        _add_collection_root(config, PITFALLS_DIR)


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
        if parent.config.stash[STATE_KEY].values["pitfalls"] and not parent.session.isinitpath(file_path):
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
    for root in dict.fromkeys(Path(r).resolve() for r in state.values["lint"]):
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
        for key, name in ITEMS:
            item = ProtocolItem.from_parent(self, name=name)
            item.key = key
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
        if result.fires and self.key in WALK_BACK_KEYS:
            layer = "" if result.layer is None else f" at {'block' if self.key == 'a' else 'layer'} {result.layer}"
            raise ProtocolFailure(
                f"({self.key}) {result.name} fires on {self.checkpoint}{layer}: {comparison(result)}\n"
                f"    {result.detail}\n"
                f"    meaning: {MEANING[self.key]}\n"
                f"    verdict: {report.verdict}"
            )
        if not result.evaluated:
            raise ProtocolFailure(f"({self.key}) {result.name}: {result.detail}")
        self.add_report_section("call", "fa", f"({self.key}) {result.name}: {comparison(result)} — {status(result)}")

    def repr_failure(self, excinfo, style=None):
        from .errors import FAError

        if isinstance(excinfo.value, ProtocolFailure):
            return str(excinfo.value)
        if isinstance(excinfo.value, FAError):
            return f"pytest-fa cannot diagnose {self.checkpoint}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"fa-protocol[{self.checkpoint}]::{self.name}"


class CompareItem(ProtocolItem):
    """This checkpoint against its report in the ``--fa-compare`` file."""

    def runtest(self) -> None:
        state = self.config.stash[STATE_KEY]
        comparison = state.compare(self.checkpoint)
        if comparison is None:
            pytest.skip(f"{self.checkpoint} is not in {state.values['compare']}: nothing to compare")
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
        terminalreporter.write_line(pitfall_table(state.pitfall_outcomes))
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
        terminalreporter.write_line(str(report))
    comparisons = state.comparisons()
    if comparisons:
        from .compare import comparison_table

        terminalreporter.section(f"pytest-fa compare with {state.values['compare']}")
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
    if state.values["report_md"]:
        from .markdown import markdown_report

        path = Path(state.values["report_md"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown_report(reports, __version__), encoding="utf-8")
    if state.values["plot"]:
        from .plot import write_report_plots

        write_report_plots(reports, state.values["plot"])
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
