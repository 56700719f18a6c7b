"""Per-session state of the plugin: resolved options, the protocol runner, cached reports."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_fa.errors import CheckpointError, FABudgetWarning, FACacheWarning, as_flags
from pytest_fa.core.settings import SessionSettings
from pytest_fa.core.thresholds import DiagnosticThresholds

if TYPE_CHECKING:
    from pytest_fa.protocol import ProtocolRunner
    from pytest_fa.core.report import DiagnosticReport

STATE_KEY: pytest.StashKey[FAState] = pytest.StashKey()


class FAState:
    """What the options asked for (one :class:`SessionSettings`); builds the (torch-importing)
    runner on first use. Reports are cached by the runner only. Registered as a plugin."""

    def __init__(self, config: pytest.Config, settings: SessionSettings) -> None:
        self.config = config
        self.settings = settings
        self.thresholds: DiagnosticThresholds = settings.thresholds
        self.checkpoints: list[str] = [str(p) for p in settings.checkpoint]
        self._runner: ProtocolRunner | None = None
        self._errors: dict[tuple[str, DiagnosticThresholds], Exception] = {}
        self.pitfall_outcomes: dict[str, dict[str, list[str]]] = {}
        self.saved: dict[str, Any] | None = None
        self.tolerances: tuple = ()
        self._worker_reports: dict[str, DiagnosticReport] = {}
        self._sent: set[str] = set()
        self.write_errors: list[str] = []

    @property
    def runner(self) -> ProtocolRunner:
        if self._runner is None:
            from pytest_fa.protocol import ProtocolRunner

            self._runner = ProtocolRunner(self.settings, root=self.config.rootpath)
        return self._runner

    def cache_dir(self) -> Path | None:
        cache = getattr(self.config, "cache", None)
        if cache is None:
            return None
        try:
            return Path(cache.mkdir("pytest-fa"))
        except OSError as exc:  # a read-only project folder
            return self.runner.temporary_cache(exc)

    def check_marker(self, marker: pytest.Mark) -> DiagnosticThresholds:
        """The session thresholds with the marker's overrides; a failure when they are not thresholds."""
        if marker.args:
            pytest.fail("fa_protocol takes threshold keyword arguments only, e.g. fa_protocol(grad_floor=1e-6)", pytrace=False)
        try:
            return self.thresholds.updated(**marker.kwargs)
        except (TypeError, ValueError) as exc:
            pytest.fail(f"fa_protocol marker: {exc}", pytrace=False)

    def load_saved_report(self) -> None:
        """Read ``--fa-compare`` and parse ``--fa-compare-fail`` at start-up (usage errors)."""
        from pytest_fa.core.report_json import load_saved_report
        from pytest_fa.core.tolerance import CompareError, parse_fail_specs

        path, specs = self.settings.compare, self.settings.compare_fail
        if path is None:
            return
        try:
            self.saved = load_saved_report(path)
            self.tolerances = parse_fail_specs(specs)
        except CompareError as exc:
            flag = "--fa-compare-fail" if self.saved is not None else f"--fa-compare={path}"
            raise pytest.UsageError(f"{flag}: {as_flags(str(exc))}") from None

    def compare(self, path: str, report: DiagnosticReport | None = None):
        """This checkpoint's report (by default computed here) against its saved one (None: not in the saved file)."""
        from pytest_fa.core.compare import compare_reports, match_reports

        stubs = [{"label": Path(p).name, "context": {"checkpoint": p}} for p in self.checkpoints]
        old = {new["context"]["checkpoint"]: old for new, old in match_reports(self.saved["reports"], stubs)}.get(path)
        if old is None:
            return None
        return compare_reports(old, (report if report is not None else self.report(path)).to_dict(), self.tolerances)

    def comparisons(self) -> list:
        """Every diagnosed checkpoint that the saved report holds, against its saved report."""
        if self.saved is None:
            return []
        found = [self.compare(path, report) for path, report in self.reports_by_path().items()]
        return [comparison for comparison in found if comparison is not None]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Note each pitfall test's outcome (for the suite or for the user's checkpoint), and keep
        the protocol reports that a pytest-xdist worker sent with its test reports."""
        for name, value in report.user_properties:
            if name == "fa_pitfall":
                pitfall_id, checks_checkpoint = value
                entry = self.pitfall_outcomes.setdefault(pitfall_id, {"suite": [], "checkpoint": []})
                entry["checkpoint" if checks_checkpoint else "suite"].append(report.outcome)
        if hasattr(report, "fa_reports"):  # a checkpoint diagnosed by two workers is kept once
            from pytest_fa.core.report import DiagnosticReport

            for entry in report.fa_reports:
                self._worker_reports.setdefault(entry["path"], DiagnosticReport.from_dict(entry["report"]))

    def report(self, path: str, thresholds: DiagnosticThresholds | None = None) -> DiagnosticReport:
        """The protocol report of ``path`` (cached by the runner); an error is kept and raised again."""
        key = (str(path), thresholds or self.thresholds)
        if key in self._errors:
            raise self._errors[key]
        try:
            with _warnings_as_flags():
                return self.runner.report(key[0], key[1], cache_dir=self.cache_dir())
        except Exception as exc:
            self._errors[key] = exc
            raise

    def unreadable_checkpoints(self) -> list[str]:
        """Read every checkpoint file once, before any data is loaded or baseline trained;
        the error of each one that cannot be read is kept for its items."""
        unreadable = []
        for path in self.checkpoints:
            try:
                self.runner.read(path)
            except CheckpointError as exc:
                self._errors[(path, self.thresholds)] = exc
                unreadable.append(path)
        return unreadable

    def reports_by_path(self) -> dict[str, DiagnosticReport]:
        """Reports under the session's thresholds, in checkpoint order: computed here, or
        (on the pytest-xdist controller) by the workers."""
        found = {path: self._local_report(path) or self._worker_reports.get(path) for path in self.checkpoints}
        return {path: report for path, report in found.items() if report is not None}

    def _local_report(self, path: str) -> DiagnosticReport | None:
        return None if self._runner is None else self._runner.cached_report(path, self.thresholds)

    def reports(self) -> list[DiagnosticReport]:
        return list(self.reports_by_path().values())

    def not_measured(self) -> list[str]:
        """The checkpoints asked for that have no report (interrupted, crashed, deselected or undiagnosable)."""
        measured = self.reports_by_path()
        return [path for path in self.checkpoints if path not in measured]

    def unsent_report_dicts(self) -> list[dict[str, Any]]:
        """What a pytest-xdist worker sends its controller: ``{"path", "report"}`` pairs of
        the reports it computed since it last sent."""
        new = {path: self._local_report(path) for path in self.checkpoints if path not in self._sent}
        entries = [{"path": path, "report": report.to_dict()} for path, report in new.items() if report is not None]
        self._sent.update(entry["path"] for entry in entries)
        return entries


@contextlib.contextmanager
def _warnings_as_flags():
    """pytest-fa's own warnings are given again naming the option (``--fa-frozen-acc=ACC``); other
    warnings pass as they came."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for warning in caught:
            if issubclass(warning.category, (FABudgetWarning, FACacheWarning)):
                warnings.warn(warning.category(as_flags(str(warning.message))), stacklevel=3)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
