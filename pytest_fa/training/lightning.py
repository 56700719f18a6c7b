"""The early-stop monitor in a Lightning run (``pip install pytest-fa[lightning]``).

    monitor = EarlyStopMonitor(model.net, eval_batches(data, 8, 128), every=100, credit=DFACredit(feedback))
    trainer = lightning.Trainer(callbacks=[MonitorCallback(monitor)], ...)
"""

from __future__ import annotations

from pytest_fa.training.monitor import EarlyStopMonitor, check_watched, logged_values, require

Callback = require("lightning.pytorch", "lightning").Callback


class MonitorCallback(Callback):
    """Steps ``monitor`` at each optimizer step (``trainer.global_step``), logs every record to the
    trainer's loggers at that step (and to ``callback_metrics``) under ``fa/``, and at the first
    firing of ``monitor.stop_on`` sets ``trainer.should_stop`` (``stop=False``: records only)."""

    def __init__(self, monitor: EarlyStopMonitor, stop: bool = True) -> None:
        self.monitor = monitor
        self.stop = stop
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        check_watched(self.monitor, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:  # no optimizer step since the last batch (gradient accumulation)
            return
        self._last_step = step
        recorded = len(self.monitor.records)
        fired = self.monitor.step(step)
        if len(self.monitor.records) > recorded:
            values = logged_values(self.monitor.records[-1])
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
            pl_module.log_dict(values, on_step=True, on_epoch=False, logger=False)
        if fired and self.stop:
            trainer.should_stop = True
