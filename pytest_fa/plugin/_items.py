"""The items the plugin adds to a session: one per diagnostic and checkpoint, the
comparison with a saved report, and one per file under ``--fa-lint``."""

from __future__ import annotations

import pytest

from pytest_fa.core import registry
from pytest_fa.errors import as_flags
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
        from pytest_fa.core.render import comparison, status

        report = self.config.stash[STATE_KEY].report(self.checkpoint)
        result = report.diagnostics[self.key]
        self.user_properties.append(("fa_value", result.value))
        if result.fires and self.key in registry.walk_back_keys():
            layer = "" if result.layer is None else f" at {'block' if self.key == 'a' else 'layer'} {result.layer}"
            raise ProtocolFailure(as_flags(
                f"({self.key}) {result.name} fires on {self.checkpoint}{layer}: {comparison(result)}\n"
                f"    {result.detail}\n"
                f"    meaning: {registry.get(self.key).meaning}\n"
                f"    verdict: {report.verdict}"
            ))
        if not result.evaluated:
            raise ProtocolFailure(as_flags(f"({self.key}) {result.name}: {result.detail}"))
        self.add_report_section("call", "fa", f"({self.key}) {result.name}: {comparison(result)} — {status(result)}")

    def repr_failure(self, excinfo, style=None):
        from pytest_fa.errors import FAError

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
        from pytest_fa.lint import python_files

        for file in python_files([self.path]):
            yield LintItem.from_parent(self, name=str(file), path=file)


class LintFindings(Exception):
    """Source-level pitfalls found in one file."""


class LintItem(pytest.Item):
    def runtest(self) -> None:
        from pytest_fa.lint import lint_file

        findings = lint_file(self.path)
        if findings:
            raise LintFindings("\n".join(str(f) for f in findings))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, LintFindings):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"fa-lint {self.path}"
