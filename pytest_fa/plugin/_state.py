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
    """What the options asked for (one :class:`SessionSettings`); builds the
    (torch-importing) runner on first use. Reports are cached by the runner only."""

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

    # -- runner ------------------------------------------------------------------------------
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

    # -- thresholds from markers -------------------------------------------------------------
    def thresholds_for(self, node: pytest.Item | None) -> DiagnosticThresholds:
        marker = node.get_closest_marker("fa_protocol") if node is not None else None
        if marker is None:
            return self.thresholds
        self.check_marker(marker)
        return self.thresholds.updated(**marker.kwargs)

    def check_marker(self, marker: pytest.Mark) -> None:
        if marker.args:
            pytest.fail("fa_protocol takes threshold keyword arguments only, e.g. fa_protocol(grad_floor=1e-6)", pytrace=False)
        try:
            self.thresholds.updated(**marker.kwargs)
        except (TypeError, ValueError) as exc:
            pytest.fail(f"fa_protocol marker: {exc}", pytrace=False)

    # -- comparison with a saved report --------------------------------------------------------
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

    def saved_report(self, path: str) -> dict[str, Any] | None:
        """The saved report of this checkpoint (None: not in the ``--fa-compare`` file)."""
        from pytest_fa.core.compare import match_reports

        stubs = [{"label": Path(p).name, "context": {"checkpoint": p}} for p in self.checkpoints]
        pairs = {new["context"]["checkpoint"]: old for new, old in match_reports(self.saved["reports"], stubs)}
        return pairs.get(path)

    def compare(self, path: str):
        """This checkpoint's report against its saved one (None: not in the saved file)."""
        from pytest_fa.core.compare import compare_reports

        old = self.saved_report(path)
        return None if old is None else compare_reports(old, self.report(path).to_dict(), self.tolerances)

    def comparisons(self) -> list:
        """Every diagnosed checkpoint that the saved report holds, against its saved report."""
        from pytest_fa.core.compare import compare_reports

        if self.saved is None:
            return []
        pairs = [(self.saved_report(path), report) for path, report in self.reports_by_path().items()]
        return [compare_reports(old, new.to_dict(), self.tolerances) for old, new in pairs if old is not None]

    # -- pitfall suite ------------------------------------------------------------------------
    def record_pitfall(self, pitfall_id: str, checks_checkpoint: bool, outcome: str) -> None:
        """Note one pitfall test's outcome, for the suite or for the user's checkpoint."""
        entry = self.pitfall_outcomes.setdefault(pitfall_id, {"suite": [], "checkpoint": []})
        entry["checkpoint" if checks_checkpoint else "suite"].append(outcome)

    # -- reports -----------------------------------------------------------------------------
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
        out = {}
        for path in self.checkpoints:
            report = self._local_report(path) or self._worker_reports.get(path)
            if report is not None:
                out[path] = report
        return out

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
        entries = []
        for path in self.checkpoints:
            report = None if path in self._sent else self._local_report(path)
            if report is not None:
                self._sent.add(path)
                entries.append({"path": path, "report": report.to_dict()})
        return entries

    def add_worker_reports(self, entries: list[dict[str, Any]]) -> None:
        """Reports from a pytest-xdist worker; a checkpoint diagnosed by two workers is kept once."""
        from pytest_fa.core.report import DiagnosticReport

        for entry in entries:
            self._worker_reports.setdefault(entry["path"], DiagnosticReport.from_dict(entry["report"]))


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
