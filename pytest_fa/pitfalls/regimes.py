"""Real training runs that put the network in the regime where the pitfalls bite.

``degenerate_dfa`` trains DFA on the ResMLP (d = 256, L = 4) with MNIST-1D until the
deepest BP reference is at the numerical floor — Mode 1 of the reference study, reached
here in about 750 steps by a constant learning rate of 3e-2 (the paper's 1e-3 with a
cosine schedule needs tens of thousands of steps). Every epoch's weights are kept, so a
test can also look at the meaningful regime the run passed through. ``healthy_bp`` trains
the same architecture on the same data with backprop and the paper's recipe. Each run
happens once per process; tests must not change the models they are given (copy first).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.training.data import Dataset, eval_batches, load_dataset
from pytest_fa.training.trainer import Recipe, resolve_device, train

PITFALL_DATA = {"num_samples": 20000, "seed": 42}
PITFALL_ARCH = {"d": 256, "depth": 4}
DEGENERATE_RECIPE = Recipe(lr=3e-2, schedule="constant")
DEGENERATE_EPOCHS = 6
MEANINGFUL_EPOCH = 1  # the degenerate run before (a) and (b) fire: the regime in which Γ is reported
HEALTHY_EPOCHS = 3


@dataclass
class Regime:
    """A trained model with everything needed to measure it honestly — or naively."""

    name: str
    model: nn.Module
    method: str
    feedback: list[torch.Tensor]
    data: Dataset
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    history: list[dict[str, Any]]
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    bundle: Any = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def model_at(self, epoch: int) -> nn.Module:
        """A copy of the model as it was after ``epoch``."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.snapshots[epoch])
        return model.eval()

    def meaningful_model_at(self, epoch: int) -> nn.Module:
        """``model_at(epoch)``, after checking that (a) and (b) did not fire yet at that epoch:
        the regime in which a paper would report Γ."""
        record = self.history[epoch - 1]
        limits = DiagnosticThresholds()
        g_ref = record["g_L"] * record["batch_size"] / limits.floor_batch_size
        assert record["max_growth"] < limits.max_growth and g_ref > limits.grad_floor, (
            f"the regime changed: epoch {epoch} is no longer in the meaningful regime: {record}"
        )
        return self.model_at(epoch)

    def first_epoch(self, key: str, predicate) -> int | None:
        """The first epoch whose monitor value ``key`` satisfies ``predicate``."""
        for record in self.history:
            if predicate(record[key]):
                return record["epoch"]
        return None


def _run(
    name: str,
    method: str,
    recipe: Recipe,
    epochs: int,
    device: str | None,
    seed: int,
    arch: str = "resmlp",
    arch_config: dict[str, Any] = PITFALL_ARCH,
    data_config: dict[str, Any] = PITFALL_DATA,
) -> Regime:
    device = resolve_device(device)
    data = load_dataset("mnist1d", **data_config).to(device)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep(model, record):
        snapshots[record["epoch"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the degenerate runs are chaotic: another thread count, another run
    try:
        result = train(
            data, method, arch=arch, arch_config=arch_config, epochs=epochs, seed=seed, recipe=recipe,
            device=device, on_epoch=keep,
        )
    finally:
        torch.set_num_threads(threads)
    model = result.model.to(device).eval()
    return Regime(
        name=name,
        model=model,
        method=method,
        feedback=[b.to(device) for b in result.state.feedback],
        data=data,
        batches=eval_batches(data, 8, 128, seed=0),
        history=result.history,
        snapshots=snapshots,
        bundle=result.bundle,
    )


@functools.cache
def degenerate_dfa(device: str | None = None, seed: int = 42) -> Regime:
    """DFA driven into Mode 1: ‖h_L‖ ≈ 1.5e8, ‖g_L‖ ≈ 5.7e-10 at batch 128, gain 7.9e-8 (a few seconds on one core)."""
    return _run("degenerate DFA", "dfa", DEGENERATE_RECIPE, DEGENERATE_EPOCHS, device, seed)


@functools.cache
def healthy_bp(device: str | None = None, seed: int = 42) -> Regime:
    """BP on the same architecture and data with the paper's recipe (about 8 s on 2 CPU cores)."""
    return _run("healthy BP", "bp", Recipe(), HEALTHY_EPOCHS, device, seed)


BATCHNORM_DATA = {"num_samples": 6000, "seed": 42}
BATCHNORM_CNN = {"channels": 16, "depth": 3, "fc": 64}


@functools.cache
def batchnorm_dfa(device: str | None = None, seed: int = 42) -> Regime:
    """DFA on SmallCNN (BatchNorm in every block) at the degenerate regime's recipe, 2 epochs
    of 6 000 MNIST-1D samples: a model whose train and eval modes measure differently."""
    return _run(
        "BatchNorm DFA", "dfa", DEGENERATE_RECIPE, 2, device, seed,
        arch="smallcnn", arch_config=BATCHNORM_CNN, data_config=BATCHNORM_DATA,
    )
