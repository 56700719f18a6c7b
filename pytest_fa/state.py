"""Per-session state of the plugin: resolved options, the protocol runner, cached reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .thresholds import DiagnosticThresholds, threshold_fields

if TYPE_CHECKING:
    from .protocol import ProtocolRunner
    from .report import DiagnosticReport

STATE_KEY: pytest.StashKey[FAState] = pytest.StashKey()
MIN_EVAL_BATCHES = 8


class FAState:
    """What the options asked for; builds the (torch-importing) runner on first use."""

    def __init__(self, config: pytest.Config, values: dict[str, Any], thresholds: DiagnosticThresholds) -> None:
        self.config = config
        self.values = values
        self.thresholds = thresholds
        self.checkpoints: list[str] = [str(p) for p in values["checkpoint"]]
        self.report_json: str | None = values["report_json"]
        self._runner: ProtocolRunner | None = None
        self._reports: dict[tuple[str, DiagnosticThresholds], DiagnosticReport] = {}
        self._errors: dict[tuple[str, DiagnosticThresholds], Exception] = {}
        self.pitfall_outcomes: dict[str, dict[str, list[str]]] = {}

    @classmethod
    def from_options(cls, config: pytest.Config, values: dict[str, Any]) -> FAState:
        names = [f.name for f in threshold_fields()]
        try:
            thresholds = DiagnosticThresholds().updated(**{n: values[n] for n in names})
        except (TypeError, ValueError) as exc:
            raise pytest.UsageError(f"pytest-fa: {exc}") from None
        if values["eval_batches"] < MIN_EVAL_BATCHES:
            raise pytest.UsageError(
                f"--fa-eval-batches={values['eval_batches']}: diagnostic (c) needs at least "
                f"{MIN_EVAL_BATCHES} disjoint batches"
            )
        if values["batch_size"] < 2:
            raise pytest.UsageError("--fa-batch-size must be at least 2")
        frozen_acc = values["frozen_acc"]
        if frozen_acc is not None and not 0.0 <= frozen_acc <= 1.0:
            raise pytest.UsageError(
                f"--fa-frozen-acc={frozen_acc}: give the accuracy as a fraction in [0, 1], e.g. 0.65"
            )
        if values["frozen_epochs"] is not None and values["frozen_epochs"] < 1:
            raise pytest.UsageError("--fa-frozen-epochs must be at least 1")
        _check_device(values["device"])
        return cls(config, values, thresholds)

    # -- runner ------------------------------------------------------------------------------
    @property
    def runner(self) -> ProtocolRunner:
        if self._runner is None:
            from .protocol import ProtocolRunner, ProtocolSettings

            v = self.values
            self._runner = ProtocolRunner(
                ProtocolSettings(
                    model_factory=v["model"],
                    data=v["data"],
                    data_root=v["data_root"],
                    device=v["device"],
                    eval_batches=v["eval_batches"],
                    batch_size=v["batch_size"],
                    thresholds=self.thresholds,
                    frozen_acc=v["frozen_acc"],
                    frozen_epochs=v["frozen_epochs"],
                    credit=v["credit"],
                )
            )
        return self._runner

    def cache_dir(self) -> Path | None:
        cache = getattr(self.config, "cache", None)
        return None if cache is None else Path(cache.mkdir("pytest-fa"))

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

    # -- pitfall suite ------------------------------------------------------------------------
    def record_pitfall(self, pitfall_id: str, checks_checkpoint: bool, outcome: str) -> None:
        """Note one pitfall test's outcome, for the suite or for the user's checkpoint."""
        entry = self.pitfall_outcomes.setdefault(pitfall_id, {"suite": [], "checkpoint": []})
        entry["checkpoint" if checks_checkpoint else "suite"].append(outcome)

    # -- reports -----------------------------------------------------------------------------
    def report(self, path: str, thresholds: DiagnosticThresholds | None = None) -> DiagnosticReport:
        """The protocol report of ``path``; computed once, errors included."""
        key = (str(path), thresholds or self.thresholds)
        if key in self._errors:
            raise self._errors[key]
        if key not in self._reports:
            try:
                self._reports[key] = self.runner.report(key[0], key[1], cache_dir=self.cache_dir())
            except Exception as exc:
                self._errors[key] = exc
                raise
        return self._reports[key]

    def unreadable_checkpoints(self) -> list[str]:
        """Read every checkpoint file once, before any data is loaded or baseline trained;
        the error of each one that cannot be read is kept for its items."""
        from .checkpoint import read_checkpoint
        from .errors import CheckpointError

        unreadable = []
        for path in self.checkpoints:
            try:
                read_checkpoint(path)
            except CheckpointError as exc:
                self._errors[(path, self.thresholds)] = exc
                unreadable.append(path)
        return unreadable

    def reports(self) -> list[DiagnosticReport]:
        """Reports under the session's thresholds, in checkpoint order."""
        return [
            self._reports[(p, self.thresholds)]
            for p in self.checkpoints
            if (p, self.thresholds) in self._reports
        ]


def _check_device(device: str) -> None:
    if device in ("auto", "cpu"):
        return
    if not device.startswith("cuda"):
        raise pytest.UsageError(f"--fa-device={device!r}: use auto, cpu or cuda[:N]")
    import torch

    if not torch.cuda.is_available():
        raise pytest.UsageError(
            f"--fa-device={device}: torch sees no CUDA GPU on this machine; use --fa-device=cpu or auto"
        )
