"""The items the plugin adds to a session: one per diagnostic and checkpoint, the
comparison with a saved report, and one per file under ``--fa-lint``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from pytest_fa.core import registry
from pytest_fa.errors import FAError, as_flags
from pytest_fa.plugin._state import STATE_KEY


def collected(collector: pytest.Collector) -> list[pytest.Item]:
    """Collect through pytest's hooks, so the items are counted and reported like any others."""
    report = collector.ihook.pytest_make_collect_report(collector=collector)
    collector.ihook.pytest_collectreport(report=report)
    return [node for node in report.result if isinstance(node, pytest.Item)]


class ProtocolCollector(pytest.Collector):
    """The protocol items of one checkpoint: one per diagnostic."""

    checkpoint: str = ""

    def collect(self):
        for diagnostic in registry.DIAGNOSTICS:
            item = ProtocolItem.from_parent(self, name=diagnostic.item)
            item.key = diagnostic.key
            item.add_marker("fa_protocol")
            yield item
        if self.config.stash[STATE_KEY].saved is not None:
            yield CompareItem.from_parent(self, name="compare")


class ItemFailure(Exception):
    """A diagnostic fired, or flake8 found source-level pitfalls: the message is the whole failure."""


class ProtocolItem(pytest.Item):
    key: str = ""

    @property
    def checkpoint(self) -> str:
        return self.parent.checkpoint

    def runtest(self) -> None:
        from pytest_fa.core.render import comparison, status

        report = self.config.stash[STATE_KEY].report(self.checkpoint)
        result = report.diagnostics[self.key]
        self.user_properties.append(("fa_value", result.value))
        if result.fires and self.key in registry.walk_back_keys():
            layer = "" if result.layer is None else f" at {'block' if self.key == 'a' else 'layer'} {result.layer}"
            raise ItemFailure(as_flags(
                f"({self.key}) {result.name} fires on {self.checkpoint}{layer}: {comparison(result)}\n"
                f"    {result.detail}\n"
                f"    meaning: {registry.get(self.key).meaning}\n"
                f"    verdict: {report.verdict}"
            ))
        if not result.evaluated:
            raise ItemFailure(as_flags(f"({self.key}) {result.name}: {result.detail}"))
        self.add_report_section("call", "fa", f"({self.key}) {result.name}: {comparison(result)} — {status(result)}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ItemFailure):
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
            raise ItemFailure(comparison.summary())
        self.add_report_section("call", "fa", comparison.summary())


class LintCollector(pytest.Collector):
    """One item per file flake8 checks under a ``--fa-lint`` path (the project's flake8
    configuration applies: its excludes, ``per-file-ignores``)."""

    def collect(self):
        from flake8.api.legacy import get_style_guide
        from flake8.discover_files import expand_paths

        options = get_style_guide().options
        for file in sorted(expand_paths(paths=[str(self.path)], stdin_display_name=options.stdin_display_name,
                                        filename_patterns=options.filename, exclude=options.exclude)):
            yield LintItem.from_parent(self, name=file, path=Path(file))


class LintItem(pytest.Item):
    def runtest(self) -> None:
        """``flake8 --select=FA,E9 FILE``: the FA findings, and E9 when the file cannot be read or
        parsed; a failure of flake8 itself fails the item too (its message in the captured output)."""
        from flake8.main.cli import main

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp, "findings")
            try:
                status = main(["--select=FA,E9", "--format=default", "--color=never", f"--output-file={out}", str(self.path)])
            except RecursionError:  # raised by ast.parse inside flake8
                raise ItemFailure(f"{self.path}: flake8 cannot check this file: an expression is nested too deeply "
                                   "for Python's parser; split it") from None
            findings = out.read_text().strip() if out.exists() else ""
        if status or findings:
            raise ItemFailure(findings or "flake8 could not check this file: see its output below")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ItemFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"fa-lint {self.path}"
