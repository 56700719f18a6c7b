"""pytest entry point: options, markers, the protocol items, the terminal tables and the report
files. torch is imported only once a checkpoint is used."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("pytest_fa.assertions", "pytest_fa.pitfalls")

from pytest_fa import __version__  # noqa: E402
from pytest_fa.core.files import WriteError, write_atomically  # noqa: E402
from pytest_fa.core.thresholds import threshold_fields  # noqa: E402
from pytest_fa.errors import as_flags  # noqa: E402
from pytest_fa.pitfalls import HERE as PITFALLS_DIR  # noqa: E402
from pytest_fa.plugin._items import LintCollector, ProtocolCollector, collected  # noqa: E402
from pytest_fa.plugin._options import OPTIONS, THRESHOLD_OPTIONS, add_options, check_report_paths, session_settings  # noqa: E402,F401
from pytest_fa.plugin._state import STATE_KEY, FAState  # noqa: E402

pytest_plugins = ["pytest_fa.fixtures"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for marker in (
        "fa_protocol(**thresholds): a test of the pytest-fa protocol; skipped without --fa-checkpoint; keyword "
        "arguments override thresholds (" + ", ".join(f.name for f in threshold_fields()) + ")",
        "fa_pitfall(id): a test of the pitfall regression suite that pins pitfall `id`",
        "fa_realisation: a pitfall test run on one realisation (seed, threads) of its training runs",
    ):
        config.addinivalue_line("markers", marker)
    settings = session_settings(config)
    if settings.lint:
        _check_lint(settings.lint)
    check_report_paths(settings)
    state = config.stash[STATE_KEY] = FAState(config, settings)
    state.load_saved_report()
    config.pluginmanager.register(state, "fa-session")  # its pytest_runtest_logreport
    if config.pluginmanager.getplugin("html") is not None and config.getoption("htmlpath", None):  # pytest-html, --html
        from pytest_fa.plugin._html import HtmlExtras

        config.pluginmanager.register(HtmlExtras(state), "fa-html")
    if settings.pitfalls:
        from pytest_fa.pitfalls import fixtures as pitfall_fixtures

        config.pluginmanager.register(pitfall_fixtures, "fa-pitfalls")
        _add_collection_root(config, PITFALLS_DIR)


def _check_lint(roots: list) -> None:
    """Every ``--fa-lint`` path exists, and flake8 with the FA checks pytest-fa registers is installed."""
    from importlib.metadata import entry_points
    from importlib.util import find_spec

    for root in roots:
        if not Path(root).exists():
            raise pytest.UsageError(f"--fa-lint={root}: no such file or folder")
    if find_spec("flake8") is None:
        raise pytest.UsageError("--fa-lint runs flake8, which is not installed: pip install pytest-fa[lint]")
    if not any(ep.value == "pytest_fa.lint:Checker" for ep in entry_points(group="flake8.extension")):
        raise pytest.UsageError("--fa-lint: flake8 does not know pytest-fa's FA checks; reinstall pytest-fa "
                                "(pip install pytest-fa[lint], or pip install -e . in a source checkout)")


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
        items.extend(collected(LintCollector.from_parent(session, name=name, nodeid=name, path=root)))
    unreadable = state.unreadable_checkpoints() if state.checkpoints else []
    first: list[pytest.Item] = []
    for path in state.checkpoints:
        name = f"fa-protocol[{path}]"
        collector = ProtocolCollector.from_parent(session, name=name, nodeid=name, path=Path(path).resolve())
        collector.checkpoint = path
        # a file that cannot be read fails first, before any other checkpoint trains a baseline
        (first if path in unreadable else items).extend(collected(collector))
    items[:0] = first


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    marker = item.get_closest_marker("fa_pitfall")
    if marker is not None and (report.when == "call" or not report.passed):
        checks_checkpoint = "fa_checkpoint_path" in getattr(item, "fixturenames", ())
        # carried on the report, so it reaches the pytest-xdist controller too
        report.user_properties.append(("fa_pitfall", [marker.args[0], checks_checkpoint]))
    if report.when == "teardown" and hasattr(item.config, "workeroutput"):
        # a pytest-xdist worker sends each protocol report with the test report after it, so
        # a worker that crashes later loses only the checkpoint it was measuring
        entries = item.config.stash[STATE_KEY].unsent_report_dicts()
        if entries:
            report.fa_reports = entries
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return
    if state.pitfall_outcomes:
        from pytest_fa.plugin._pitfall_table import pitfall_table

        terminalreporter.section("pytest-fa pitfalls")
        terminalreporter.write_line(as_flags(pitfall_table(state.pitfall_outcomes)))
    reports = state.reports()
    if reports:  # every measured checkpoint, its seed groups, its reports and comparisons
        from pytest_fa.core.report import summary_table
        from pytest_fa.core.seeds import seed_groups, seed_table

        terminalreporter.section("pytest-fa protocol")
        terminalreporter.write_line(summary_table(reports))
        groups = seed_groups(reports)
        if groups:
            terminalreporter.write_line("\nseeds of one configuration (mean ± sd):")
            terminalreporter.write_line(seed_table(groups))
        for report in reports:
            terminalreporter.write_line("\n" + as_flags(str(report)))
        comparisons = state.comparisons()
        if comparisons:
            from pytest_fa.core.compare import comparison_table

            terminalreporter.section(f"pytest-fa compare with {state.settings.compare}")
            terminalreporter.write_line(comparison_table(comparisons))
    _report_files_summary(terminalreporter, state)


def _report_files_summary(terminalreporter, state: FAState) -> None:
    """What became of the report files: written (and whether partial), not written, or failed."""
    settings = state.settings
    flags = [f for f, v in (("--fa-report-json", settings.report_json), ("--fa-report-md", settings.report_md),
                            ("--fa-plot", settings.plot)) if v]
    if not flags or not state.checkpoints:
        return
    missing = state.not_measured()
    terminalreporter.write_line("")
    if len(missing) == len(state.checkpoints):
        terminalreporter.write_line(f"pytest-fa: no checkpoint was measured: {', '.join(flags)} not written", yellow=True)
        return
    if missing:
        terminalreporter.write_line(
            f"pytest-fa: the reports are partial: {len(missing)} of {len(state.checkpoints)} checkpoints not measured "
            f"({', '.join(missing)}); the files say so (\"partial\": true)", yellow=True, bold=True)
    for error in state.write_errors:
        terminalreporter.write_line(f"pytest-fa: {error}", red=True, bold=True)
    if settings.report_json and not any(e.startswith("--fa-report-json:") for e in state.write_errors):
        terminalreporter.write_line(f"JSON report{' (partial)' if missing else ''}: {settings.report_json}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _drop_idle_hypothesis_summary(session.config)
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: the controller writes
        return
    # the JSON, the Markdown and the figures, each written whole or not at all (a failure is kept
    # for the terminal summary); the JSON and the Markdown say when a checkpoint was not measured
    reports, missing, settings = state.reports(), state.not_measured(), state.settings
    if not reports:
        return

    def attempt(flag: str, write, *args) -> None:
        try:
            write(*args)
        except WriteError as exc:
            state.write_errors.append(f"{flag}: {exc}")

    if settings.report_md:
        from pytest_fa.core.markdown import markdown_report

        attempt("--fa-report-md", write_atomically, settings.report_md,
                as_flags(markdown_report(reports, __version__, not_measured=missing)))
    if settings.plot:
        from pytest_fa.core.plot import write_report_plots

        attempt("--fa-plot", write_report_plots, reports, settings.plot)
    if settings.report_json:
        from pytest_fa.core.report_json import report_json

        attempt("--fa-report-json", write_atomically, settings.report_json, report_json(reports, missing))
    if state.write_errors and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _drop_idle_hypothesis_summary(config: pytest.Config) -> None:
    """Unregister hypothesis's pytest plugin when nothing in the session imported hypothesis: its
    terminal summary would import all of it (about 0.45× an ``import torch``, benchmarks/RESULTS.md)
    to report what only a session that imported it can have."""
    if "hypothesis" in sys.modules:
        return
    plugin = config.pluginmanager.get_plugin("hypothesispytest")
    if plugin is not None:
        config.pluginmanager.unregister(plugin)
