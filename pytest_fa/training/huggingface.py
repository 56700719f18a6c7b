"""The early-stop monitor in a Hugging Face ``Trainer`` run (``pip install pytest-fa[hf]``).

    trainer = Trainer(model=wrapper, args=args, train_dataset=train)
    monitor = EarlyStopMonitor(wrapper.net, eval_batches(data, 8, 128), every=100, credit=DFACredit(feedback))
    trainer.add_callback(MonitorCallback(monitor, trainer))
"""

from __future__ import annotations

from pytest_fa.training.monitor import EarlyStopMonitor, check_watched, logged_values, require

TrainerCallback = require("transformers", "hf").TrainerCallback


class MonitorCallback(TrainerCallback):
    """Steps ``monitor`` at each optimizer step (``state.global_step``), logs every record under ``fa/``
    with ``trainer.log`` (an ``on_log`` callback would come after ``log_history`` and the ``report_to``
    integrations), and at the first firing of ``monitor.stop_on`` sets ``control.should_training_stop``
    (``stop=False``: records only)."""

    def __init__(self, monitor: EarlyStopMonitor, trainer, stop: bool = True) -> None:
        self.monitor = monitor
        self.trainer = trainer
        self.stop = stop

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        check_watched(self.monitor, model)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        recorded = len(self.monitor.records)
        fired = self.monitor.step(state.global_step)
        if len(self.monitor.records) > recorded:
            self.trainer.log(logged_values(self.monitor.records[-1]))
        if fired and self.stop:
            control.should_training_stop = True
