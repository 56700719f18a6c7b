"""The early-stop monitor and temporal replay."""

from __future__ import annotations

import pytest

from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.errors import DataError
from pytest_fa.training.data import eval_batches
from pytest_fa.training.methods import get_method
from pytest_fa.training.monitor import EarlyStopMonitor, temporal_replay
from pytest_fa.training.trainer import Recipe, train


def test_monitor_in_a_users_loop_stops_at_the_first_firing(small_data):
    """A hand-written DFA loop with a high constant learning rate explodes; the monitor stops it."""
    import torch

    from pytest_fa.models import build_model

    torch.manual_seed(0)
    model = build_model("resmlp", input_shape=[40], num_classes=10, d=64, depth=4)
    method = get_method("dfa")
    state = method.setup(model, 10, (40,), torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(method.parameters(model, state), lr=3e-2)
    total = 600
    monitor = EarlyStopMonitor(model, eval_batches(small_data, 8, 64), every=25, total_steps=total)
    for step in range(1, total + 1):
        idx = torch.randint(0, len(small_data.x_train), (128,), generator=torch.Generator().manual_seed(step))
        loss, _ = method.loss(model, state, small_data.x_train[idx], small_data.y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if monitor.step(step):
            break
    assert monitor.stopped_at == step < total
    assert monitor.first_fired["a"] == monitor.stopped_at
    assert monitor.records[-1]["a"] and not any(r["a"] for r in monitor.records[:-1])
    assert 0 < monitor.compute_saved < 1
    assert "first fired at step" in monitor.summary() and "compute saved" in monitor.summary()
    assert model.training  # the monitor leaves the mode alone


def test_temporal_replay_reads_the_first_firing_epoch(small_data):
    result = train(small_data, "dfa", arch_config={"d": 64}, epochs=4, seed=0, recipe=Recipe(lr=3e-2, schedule="constant"))
    first = temporal_replay(result.history)
    growth = [r["max_growth"] for r in result.history]
    expected = next((r["epoch"] for r in result.history if r["max_growth"] > 50), None)
    assert first["a"] == expected, growth
    assert all(r["gain_L"] > 0 and r["error_norm"] > 0 for r in result.history)
    paper = DiagnosticThresholds(max_growth=1.0, grad_floor=1.0, b_rule="paper")
    assert temporal_replay(result.history, paper) == {"a": 1, "b": 1}
    # decomposed: below the floor, (b) fires only once the backward gain is below gain_floor too
    saturated = DiagnosticThresholds(max_growth=1.0, grad_floor=1.0, gain_floor=1e-30)
    assert temporal_replay(result.history, saturated) == {"a": 1, "b": None}
    mode1 = DiagnosticThresholds(max_growth=1.0, grad_floor=1.0, gain_floor=1e9)
    assert temporal_replay(result.history, mode1) == {"a": 1, "b": 1}
    # a history without the gain (older bundles) replays (b) under the floor alone
    legacy = [{k: v for k, v in r.items() if k != "gain_L"} for r in result.history]
    assert temporal_replay(legacy, mode1.updated(gain_floor=1e-30)) == {"a": 1, "b": 1}
    with pytest.raises(ValueError, match="monitor"):
        temporal_replay([{"epoch": 1, "test_acc": 0.5}])


def test_monitor_with_a_credit_records_the_mean_gamma(small_data):
    import torch

    from pytest_fa.models import build_model

    torch.manual_seed(0)
    model = build_model("resmlp", input_shape=[40], num_classes=10, d=32, depth=4)
    method = get_method("bp")
    credit, _ = method.credit(model, method.setup(model, 10, (40,), torch.Generator().manual_seed(0)))
    batches = eval_batches(small_data, 8, 64)
    with_credit = EarlyStopMonitor(model, batches, every=1, credit=credit)
    plain = EarlyStopMonitor(model, batches, every=1)
    with_credit.step()
    plain.step()
    assert abs(with_credit.records[0]["gamma_mean"] - 1) < 1e-6  # BP's credit is the gradient itself
    assert "gamma_mean" not in plain.records[0]
    assert {k: v for k, v in with_credit.records[0].items() if k != "gamma_mean"} == plain.records[0]
    with pytest.raises(DataError, match="the mean Γ needs at least 8 eval batches, got 4; pass more batches, "
                                        "or no setting `credit` to monitor"):
        EarlyStopMonitor(model, batches[:4], credit=credit)


def test_monitor_rejects_bad_settings(small_data):
    with pytest.raises(ValueError, match="every"):
        EarlyStopMonitor(None, [], every=0)
    with pytest.raises(ValueError, match="stop_on"):
        EarlyStopMonitor(None, [], stop_on=("d",))
