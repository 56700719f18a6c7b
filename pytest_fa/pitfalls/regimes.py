"""Real training runs in the regimes where the pitfalls bite, each trained once per process
(copy before changing). The runs are chaotic: tests assert what holds for every realisation."""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_fa.core import diagnostics as D
from pytest_fa.core.reference import reference_pass
from pytest_fa.core.settings import resolve_device
from pytest_fa.core.thresholds import REFERENCE_BATCH_SIZE
from pytest_fa.training.data import Dataset, eval_batches, load_dataset
from pytest_fa.training.trainer import Recipe, train

PITFALL_DATA = {"num_samples": 20000, "seed": 42}
PITFALL_ARCH = {"d": 256, "depth": 4}
DEGENERATE_RECIPE = Recipe(lr=1e-1, schedule="constant")
DEGENERATE_MAX_EPOCHS = 16
# Mode 1 deep enough for the pitfalls that need it (the deepest reference under a third of the
# 1e-8 clamp of F.cosine_similarity, 50x below the floor)
DEEP_FLOOR = 2e-9
MEANINGFUL_RECIPE = Recipe(lr=3e-2, schedule="constant")
MEANINGFUL_EPOCHS = 2
MEANINGFUL_EPOCH = 1  # ‖g_L‖ ≥ 4.6e-6 over the sweep: Γ is defined at every layer
HEALTHY_EPOCHS = 3


@dataclass
class Regime:
    """A trained model with everything needed to measure it honestly — or naively."""

    model: nn.Module
    feedback: list[torch.Tensor]
    data: Dataset
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    history: list[dict[str, Any]]
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    bundle: Any = None
    meaningful: Regime | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def model_at(self, epoch: int) -> nn.Module:
        """A copy of the model as it was after ``epoch``."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.snapshots[epoch])
        return model.eval()

    def meaningful_model_at(self, epoch: int) -> nn.Module:
        """The meaningful run's model after ``epoch``, checked to be above the floor at every layer."""
        run = self.meaningful or self
        record = run.history[epoch - 1]
        assert not D.grad_floor(record["g_L"], record["batch_size"]), (
            f"the regime changed: epoch {epoch} is no longer in the meaningful regime: {record}"
        )
        return run.model_at(epoch)


def credited_rows(model, batches, credit) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``([a_l], [g_l])``: per-sample rows over all batches at the layers with credit, each batch from one pass."""
    per_batch = [reference_pass(model, x, y, credit).credited_rows() for x, y in batches]
    return tuple([torch.cat(layer) for layer in zip(*side)] for side in zip(*per_batch))


@contextlib.contextmanager
def torch_threads(threads: int):
    """Train on ``threads`` torch threads: part of what makes one realisation of a run."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(method: str, recipe: Recipe, epochs: int, device: str | None, seed: int, arch: str = "resmlp",
         arch_config: dict[str, Any] = PITFALL_ARCH, data_config: dict[str, Any] = PITFALL_DATA, threads: int = 1,
         stop=None) -> Regime:
    device = resolve_device(device)
    data = load_dataset("mnist1d", **data_config).to(device)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep(model, record):
        snapshots[record["epoch"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return stop is not None and stop(record)

    with torch_threads(threads):  # the degenerate runs are chaotic: another thread count, another run
        result = train(data, method, arch=arch, arch_config=arch_config, epochs=epochs, seed=seed, recipe=recipe,
                       device=device, on_epoch=keep)
    return Regime(result.model.to(device).eval(), [b.to(device) for b in result.state.feedback], data,
                  eval_batches(data, 8, 128, seed=0), result.history, snapshots, result.bundle)


def _deep_in_mode_1(record: dict[str, Any]) -> bool:
    return record["g_L"] * record["batch_size"] / REFERENCE_BATCH_SIZE < DEEP_FLOOR


@functools.cache
def degenerate_dfa(device: str | None = None, seed: int = 42, threads: int = 1) -> Regime:
    """DFA driven deep into Mode 1 (‖g_L‖ < 3e-10 at batch 128, ‖h_L‖ ~1e5 and more), with
    its meaningful run beside it; a few seconds each on one core."""
    run = _run("dfa", DEGENERATE_RECIPE, DEGENERATE_MAX_EPOCHS, device, seed, threads=threads, stop=_deep_in_mode_1)
    last = run.history[-1]
    assert _deep_in_mode_1(last), (
        f"seed {seed} on {threads} thread(s) did not reach ‖g_L‖ < {DEEP_FLOOR:g} in {len(run.history)} "
        f"epochs at lr {DEGENERATE_RECIPE.lr}: {last}"
    )
    run.meaningful = _run("dfa", MEANINGFUL_RECIPE, MEANINGFUL_EPOCHS, device, seed, threads=threads)
    assert all(torch.equal(a, b) for a, b in zip(run.feedback, run.meaningful.feedback)), "one seed, one feedback"
    return run


@functools.cache
def healthy_bp(device: str | None = None, seed: int = 42, threads: int = 1) -> Regime:
    """BP on the same architecture and data with the paper's recipe (about 8 s on 2 CPU cores)."""
    return _run("bp", Recipe(), HEALTHY_EPOCHS, device, seed, threads=threads)


BATCHNORM_DATA = {"num_samples": 6000, "seed": 42}
BATCHNORM_CNN = {"channels": 16, "depth": 3, "fc": 64}


@functools.cache
def batchnorm_dfa(device: str | None = None, seed: int = 42, threads: int = 1) -> Regime:
    """DFA on SmallCNN (BatchNorm in every block) at the degenerate regime's recipe, 2 epochs
    of 6 000 MNIST-1D samples: a model whose train and eval modes measure differently."""
    return _run("dfa", DEGENERATE_RECIPE, 2, device, seed, arch="smallcnn", arch_config=BATCHNORM_CNN,
                data_config=BATCHNORM_DATA, threads=threads)
