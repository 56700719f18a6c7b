"""pytest-html extras for the protocol's items (``--html=report.html``): the verdict on each item, the
per-layer table and the figure on a checkpoint's first one. pytest_html is imported only once it is active."""

from __future__ import annotations

import base64
from html import escape

import pytest

from pytest_fa.errors import as_flags
from pytest_fa.plugin._items import ProtocolItem
from pytest_fa.plugin._state import FAState


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain HTML table of text cells, each escaped."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="fa-layers"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class HtmlExtras:
    """Adds the extras to the call report of each protocol item whose checkpoint was measured."""

    def __init__(self, state: FAState) -> None:
        from pytest_html import __version__

        self.state = state
        # pytest-html 4 reads report.extras, older versions report.extra
        self.attribute = "extra" if __version__.split(".")[0] in {"1", "2", "3"} else "extras"
        self.shown: set[str] = set()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if report.when == "call" and isinstance(item, ProtocolItem):
            protocol = self.state.reports_by_path().get(item.checkpoint)
            if protocol is not None:
                setattr(report, self.attribute, [*getattr(report, self.attribute, []),
                                                 *self.extras(item.checkpoint, protocol)])
        return report

    def extras(self, checkpoint: str, protocol) -> list[dict]:
        """The verdict; the figure and the per-layer table the first time ``checkpoint`` is shown."""
        from pytest_html import extras

        out = [extras.html(f'<p class="fa-verdict">pytest-fa verdict on {escape(checkpoint)}: '
                           f"<strong>{escape(as_flags(protocol.verdict))}</strong></p>")]
        if checkpoint not in self.shown:
            from pytest_fa.core.report import layer_table
            from pytest_fa.core.plot import report_png

            self.shown.add(checkpoint)
            png = base64.b64encode(report_png(protocol)).decode("ascii")
            out += [extras.png(png, name=f"{protocol.label or checkpoint}: per-layer figure"),
                    extras.html(f"<p>per layer, {escape(checkpoint)}:</p>" + html_table(*layer_table(protocol, emphasis="")))]
        return out
