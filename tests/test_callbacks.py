"""The Lightning and Hugging Face callbacks: the early-stop monitor inside each library's trainer.

A DFA ResMLP at a high constant learning rate explodes within a few hundred steps (diagnostic
(a)); each trainer must stop at the step a plain loop's EarlyStopMonitor stops at, BP must run to
the end, and what reaches the trainer's logs must be the monitor's records.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.errors import FAError
from pytest_fa.models import build_model
from pytest_fa.pitfalls.regimes import torch_threads
from pytest_fa.training.data import eval_batches
from pytest_fa.training.methods import get_method
from pytest_fa.training.monitor import EarlyStopMonitor, logged_values

STEPS, EVERY, BATCH, TRAIN = 400, 10, 64, 4096  # DFA fired (a) by step 170 in each of 6 draws
LR = {"dfa": 1e-1, "bp": 1e-3}
FIRES_AT_ONCE = DiagnosticThresholds(max_growth=1.0)  # (a) fires at the first measurement

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def setup(name: str, seed: int):
    torch.manual_seed(seed)
    net = build_model("resmlp", input_shape=[40], num_classes=10, d=32, depth=4)
    method = get_method(name)
    state = method.setup(net, 10, (40,), torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(method.parameters(net, state), lr=LR[name])
    return net, method, state, optimizer


def monitor_for(net, method, state, data, thresholds=None) -> EarlyStopMonitor:
    return EarlyStopMonitor(net, eval_batches(data, 8, 64), every=EVERY, total_steps=STEPS,
                            thresholds=thresholds or DiagnosticThresholds(), credit=method.credit(net, state)[0])


def plain_stop(data, name: str, seed: int) -> int | None:
    """The step a plain loop's EarlyStopMonitor stops the same training at (same batches in the
    same order, same optimizer)."""
    net, method, state, optimizer = setup(name, seed)
    monitor = EarlyStopMonitor(net, eval_batches(data, 8, 64), every=EVERY)
    x, y = data.x_train[:TRAIN], data.y_train[:TRAIN]
    for step in range(1, STEPS + 1):
        i = (step - 1) % (TRAIN // BATCH) * BATCH
        loss, _ = method.loss(net, state, x[i:i + BATCH], y[i:i + BATCH])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if monitor.step(step):
            break
    return monitor.stopped_at


def check_logged(logged: list[tuple[int, dict]], monitor: EarlyStopMonitor) -> None:
    """``logged`` holds, step by step, exactly the numbers of the monitor's records."""
    assert [step for step, _ in logged] == [r["step"] for r in monitor.records]
    for (_, values), record in zip(logged, monitor.records):
        assert values == logged_values(record)
        assert values["fa/max_growth"] == record["max_growth"] and values["fa/a"] == float(record["a"])
        assert values["fa/g_L"] == record["g_L"] and values["fa/b"] == float(record["b"])
        assert values.get("fa/gamma_mean") == record["gamma_mean"]


def check_bp(monitor: EarlyStopMonitor, steps_run: int) -> None:
    assert monitor.stopped_at is None and steps_run == STEPS
    assert len(monitor.records) == STEPS // EVERY
    # the paper's recipe keeps BP's stream near 1.3x; 10x is a fifth of the threshold
    assert max(r["max_growth"] for r in monitor.records) < monitor.thresholds.max_growth / 5
    assert all(abs(r["gamma_mean"] - 1) < 1e-3 for r in monitor.records)  # BP's credit is the gradient


def check_dfa(monitor: EarlyStopMonitor, steps_run: int, plain: int | None) -> None:
    assert plain is not None, "the plain loop's DFA run did not fire (a) within the budget"
    assert monitor.stopped_at == monitor.first_fired["a"] == steps_run == plain
    assert monitor.records[-1]["a"] and not any(r["a"] for r in monitor.records[:-1])
    assert all("gamma_mean" in r for r in monitor.records)


# -- Lightning ----------------------------------------------------------------------------------

def lightning_fit(data, name, seed, steps=STEPS, thresholds=None, stop=True, watched=None):
    """``(trainer, monitor, [(step, fa/ values)] its logger received)`` of a manual-optimization run."""
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import Logger

    from pytest_fa.training.lightning import MonitorCallback

    class Module(L.LightningModule):
        def __init__(self, net, method, state, optimizer):
            super().__init__()
            self.net, self.method, self.state, self.optimizer = net, method, state, optimizer
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            loss, _ = self.method.loss(self.net, self.state, *batch)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()

        def configure_optimizers(self):
            return self.optimizer

    class Captured(Logger):
        name, version = "captured", 0
        received: list

        def log_metrics(self, metrics, step=None):
            self.received.append((step, {k: v for k, v in metrics.items() if k.startswith("fa/")}))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    net, method, state, optimizer = setup(name, seed)
    monitor = monitor_for(watched or net, method, state, data, thresholds)
    logger = Captured()
    logger.received = []
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x_train[:TRAIN], data.y_train[:TRAIN]),
                                         batch_size=BATCH, shuffle=False, drop_last=True)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1,
                        callbacks=[MonitorCallback(monitor, stop=stop)], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(net, method, state, optimizer), loader)
    return trainer, monitor, [entry for entry in logger.received if entry[1]]


@pytest.fixture(scope="module")
def lightning_runs(small_data, fa_realisation):
    pytest.importorskip("lightning.pytorch")
    seed, threads = fa_realisation
    with torch_threads(threads):
        return {name: lightning_fit(small_data, name, seed) for name in ("dfa", "bp")}, plain_stop(small_data, "dfa", seed)


def test_lightning_stops_dfa_at_the_monitors_first_firing(lightning_runs):
    runs, plain = lightning_runs
    trainer, monitor, _ = runs["dfa"]
    check_dfa(monitor, trainer.global_step, plain)
    assert trainer.should_stop


def test_lightning_runs_bp_to_the_end(lightning_runs):
    trainer, monitor, _ = lightning_runs[0]["bp"]
    check_bp(monitor, trainer.global_step)


def test_lightning_logs_the_monitors_records(lightning_runs):
    for name, (trainer, monitor, logged) in lightning_runs[0].items():
        check_logged(logged, monitor)
        assert trainer.callback_metrics["fa/max_growth"].item() == pytest.approx(monitor.records[-1]["max_growth"])


def test_lightning_only_flags_with_stop_off(small_data):
    trainer, monitor, logged = lightning_fit(small_data, "bp", 0, steps=3 * EVERY, thresholds=FIRES_AT_ONCE, stop=False)
    assert trainer.global_step == 3 * EVERY and monitor.stopped_at == monitor.first_fired["a"] == EVERY
    check_logged(logged, monitor)


def test_lightning_refuses_a_monitor_on_another_model(small_data):
    other = build_model("resmlp", input_shape=[40], num_classes=10, d=32, depth=4)
    with pytest.raises(FAError, match="ResMLP that is not part of the trained Module; build the EarlyStopMonitor"):
        lightning_fit(small_data, "bp", 0, steps=EVERY, watched=other)


# -- Hugging Face -------------------------------------------------------------------------------

class Wrapper(nn.Module):
    """What the Trainer calls: ``{'loss', 'logits'}`` from the named inputs."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, labels):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Samples(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def hf_train(data, name, seed, tmp_path, steps=STEPS, thresholds=None, stop=True, watched=None):
    """``(trainer, monitor, [(step, fa/ values)] another callback's on_log received)``; DFA through
    a Trainer whose compute_loss is the method's, BP through the plain Trainer."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from pytest_fa.training.huggingface import MonitorCallback

    net, method, state, optimizer = setup(name, seed)

    class MethodTrainer(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, logits = method.loss(model.net, state, inputs["x"], inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss

    class Seen(transformers.TrainerCallback):  # stands for a report_to integration
        logs: list

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append((state.global_step, {k: v for k, v in logs.items() if k.startswith("fa/")}))

    seen = Seen()
    seen.logs = []
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), report_to=[], save_strategy="no", use_cpu=True, max_steps=steps,
        per_device_train_batch_size=BATCH, train_sampling_strategy="sequential", dataloader_drop_last=True,
        lr_scheduler_type="constant", max_grad_norm=0.0, logging_strategy="no", disable_tqdm=True,
    )
    trainer_class = MethodTrainer if name != "bp" else transformers.Trainer
    trainer = trainer_class(model=Wrapper(net), args=args, train_dataset=Samples(data.x_train[:TRAIN], data.y_train[:TRAIN]),
                            optimizers=(optimizer, None), callbacks=[seen])
    monitor = monitor_for(watched or net, method, state, data, thresholds)
    trainer.add_callback(MonitorCallback(monitor, trainer, stop=stop))
    trainer.train()
    return trainer, monitor, [entry for entry in seen.logs if entry[1]]


@pytest.fixture(scope="module")
def hf_runs(small_data, fa_realisation, tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    seed, threads = fa_realisation
    with torch_threads(threads):
        runs = {name: hf_train(small_data, name, seed, tmp_path_factory.mktemp("hf")) for name in ("dfa", "bp")}
        return runs, plain_stop(small_data, "dfa", seed)


def test_hf_stops_dfa_at_the_monitors_first_firing(hf_runs):
    runs, plain = hf_runs
    trainer, monitor, _ = runs["dfa"]
    check_dfa(monitor, trainer.state.global_step, plain)


def test_hf_runs_bp_to_the_end(hf_runs):
    trainer, monitor, _ = hf_runs[0]["bp"]
    check_bp(monitor, trainer.state.global_step)


def test_hf_logs_the_monitors_records(hf_runs):
    for name, (trainer, monitor, seen) in hf_runs[0].items():
        check_logged(seen, monitor)  # what every callback's on_log, report_to's included, receives
        history = [(e["step"], {k: v for k, v in e.items() if k.startswith("fa/")})
                   for e in trainer.state.log_history if "fa/max_growth" in e]
        check_logged(history, monitor)


def test_hf_only_flags_with_stop_off(small_data, tmp_path):
    trainer, monitor, seen = hf_train(small_data, "bp", 0, tmp_path, steps=3 * EVERY, thresholds=FIRES_AT_ONCE, stop=False)
    assert trainer.state.global_step == 3 * EVERY and monitor.stopped_at == monitor.first_fired["a"] == EVERY
    check_logged(seen, monitor)


def test_hf_refuses_a_monitor_on_another_model(small_data, tmp_path):
    other = build_model("resmlp", input_shape=[40], num_classes=10, d=32, depth=4)
    with pytest.raises(FAError, match="ResMLP that is not part of the trained Wrapper; build the EarlyStopMonitor"):
        hf_train(small_data, "bp", 0, tmp_path, steps=EVERY, watched=other)


# -- without the libraries ----------------------------------------------------------------------

@pytest.mark.parametrize(("module", "library", "extra"), [
    ("pytest_fa.training.lightning", "lightning.pytorch", "lightning"),
    ("pytest_fa.training.huggingface", "transformers", "hf"),
])
def test_a_callback_without_its_library_names_the_extra(monkeypatch, module, library, extra):
    monkeypatch.setitem(sys.modules, library, None)  # import of it raises ImportError
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(FAError, match=rf"this callback needs {library.split('.')[0]}: pip install pytest-fa\[{extra}\]"):
        importlib.import_module(module)


def test_neither_library_is_a_runtime_dependency_and_the_test_extra_brings_both():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("lightning", "transformers", "accelerate"))]
    extras = project["optional-dependencies"]
    assert extras["lightning"] == ["lightning>=2.0"] and extras["hf"] == ["transformers>=5", "accelerate>=1.1"]
    assert set(extras["lightning"] + extras["hf"]) <= set(extras["test"])
    code = ("import sys, pytest_fa, pytest_fa.plugin, pytest_fa.training.trainer, pytest_fa.training.monitor; "
            "print([m for m in ('lightning', 'transformers', 'accelerate') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
