"""Third-party models through the protocol: biotorch FA and DFA, timm ViT BP and DFA, torchvision ResNet BP.

    python examples/third_party.py --epochs 10 --fashion-epochs 3

Each model is built by its own library and checked as a user would check it, from
``pytest_fa.adapt`` and ``pytest_fa.check`` (docs/frameworks.md):

- biotorch 0.0.16 (``BioModule(resmlp, mode="fa" | "dfa")``, the project's ResMLP, d = 256,
  4 blocks), trained in a plain loop by biotorch's own backward, checked with its BP twin
  (``bp_twin``) as the reference and ``credit="own-backward"`` (what biotorch's backward delivers at each state);
- a timm ``VisionTransformer`` (d = 64, 4 blocks, 4 heads) trained by BP, and by DFA with
  pytest-fa's DFA method (one fixed ``B_l`` per state, the credit given at every token),
  checked with ``DFACredit`` on the training feedback; on MNIST-1D (10 patches of 4) and on
  Fashion-MNIST (16 patches of 7×7);
- a torchvision ``ResNet`` (one basic block per stage, a one-channel stem; MNIST-1D as a
  1×40 image) trained by BP.

Every model's frozen-blocks control (``pytest_fa.frozen_control``: the same architecture at the
model's own initial weights, blocks frozen) is trained with the same recipe and epochs, and its
test accuracy is ``frozen_acc``. Recipe: AdamW lr 1e-3, weight decay 0.01, cosine, batch 128.
The diagnostics read 8 eval batches of 128 test samples; token states are read over all
tokens (the default). Prints a Markdown table; needs timm and biotorch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import pytest_fa
from pytest_fa.core.backprop import bp_twin
from pytest_fa.core.credit import DFACredit
from pytest_fa.models import build_model
from pytest_fa.training.data import load_dataset
from pytest_fa.training.methods import get_method
from pytest_fa.training.trainer import Recipe, accuracy

RECIPE = Recipe()


def fit(model: nn.Module, data, epochs: int, seed: int, loss_of) -> nn.Module:
    """The user's loop: ``loss_of(x, y)`` per batch, AdamW with the recipe, cosine schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=RECIPE.lr, weight_decay=RECIPE.weight_decay)
    steps = epochs * math.ceil(len(data.x_train) / RECIPE.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(data.x_train), generator=order).split(RECIPE.batch_size):
            loss = loss_of(data.x_train[index], data.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def backprop(model: nn.Module):
    return lambda x, y: F.cross_entropy(model(x), y)


def frozen_accuracy(init: nn.Module, blocks: str, data, epochs: int, seed: int) -> float:
    """The control of (d): ``init`` (the adapted model at its initial weights) with ``blocks``
    frozen, trained by BP."""
    control = pytest_fa.frozen_control(init, blocks, init_state=init.model.state_dict())
    return accuracy(fit(control, data, epochs, seed, backprop(control)), data.x_test, data.y_test)


class Reshaped(nn.Module):
    """Feeds the data set's samples to an image model as ``shape``."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model, self.shape = model, shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(len(x), *self.shape))


class Branch(nn.Module):
    """A timm block seen as its residual branch: ``block(h) - h``."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block(h) - h


class TimmStream(Reshaped):
    """A timm ViT as the contract pytest-fa's training methods read: ``embed_input`` writes
    ``h_0`` (patches, cls token, positions), ``blocks`` return their branches, ``read_logits``
    is the terminal norm and the head at the cls token."""

    @property
    def blocks(self) -> list[nn.Module]:
        return [Branch(block) for block in self.model.blocks]

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.model
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x.reshape(len(x), *self.shape)))))

    def read_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.norm(h))

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        hiddens = [self.embed_input(x)]
        for block in self.model.blocks:
            hiddens.append(block(hiddens[-1]))
        logits = self.read_logits(hiddens[-1])
        return (logits, hiddens) if return_hidden else logits


def timm_vit(data, seed: int) -> TimmStream:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    if len(data.input_shape) == 1:
        shape, img, patch = (1, 1, 40), (1, 40), (1, 4)
    else:
        shape, img, patch = tuple(data.input_shape), tuple(data.input_shape[1:]), (7, 7)
    vit = VisionTransformer(img_size=img, patch_size=patch, in_chans=shape[0], num_classes=data.num_classes,
                            embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
    return TimmStream(vit, shape)


def timm_rows(name: str, data, epochs: int, seed: int) -> list[dict]:
    stream = timm_vit(data, seed)
    states = ["model.norm_pre", "model.blocks.*"]
    readout = {"norm": "model.norm", "head": "model.head"}
    frozen_acc = frozen_accuracy(pytest_fa.adapt(copy.deepcopy(stream), states, **readout), states[1], data,
                                 epochs, seed)
    rows = []
    for method in ("bp", "dfa"):
        model = copy.deepcopy(stream)
        credit = None
        if method == "bp":
            fit(model, data, epochs, seed, backprop(model))
        else:
            dfa = get_method("dfa")
            state = dfa.setup(model, data.num_classes, data.input_shape, torch.Generator().manual_seed(seed + 1))
            fit(model, data, epochs, seed, lambda x, y: dfa.loss(model, state, x, y)[0])
            credit = DFACredit(state.feedback)
        adapted = pytest_fa.adapt(model, states, **readout)
        rows.append(row(f"timm ViT {method}", name, adapted, data, frozen_acc, credit=credit))
    return rows


def biotorch_rows(data, epochs: int, seed: int) -> list[dict]:
    from biotorch.module.biomodule import BioModule

    torch.manual_seed(seed)
    net = build_model("resmlp", input_shape=[40], num_classes=data.num_classes)
    frozen_acc = frozen_accuracy(pytest_fa.adapt(copy.deepcopy(net), ["embed", "blocks.*"], norm="out_ln",
                                                 head="out_head"), "blocks.*", data, epochs, seed)
    rows = []
    for mode in ("fa", "dfa"):
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints a summary
            bio = BioModule(copy.deepcopy(net), mode=mode, output_dim=data.num_classes)
        if mode == "dfa":
            fit(bio, data, epochs, seed, lambda x, y: F.cross_entropy(bio(x, y, F.cross_entropy), y))
        else:
            fit(bio, data, epochs, seed, backprop(bio))
        adapted = pytest_fa.adapt(bio, ["module.embed", "module.blocks.*"], norm="module.out_ln",
                                  head="module.out_head")
        rows.append(row(f"biotorch {mode}", "MNIST-1D", adapted, data, frozen_acc, credit="own-backward",
                        reference_model=bp_twin(adapted)))
    return rows


def resnet_rows(data, epochs: int, seed: int) -> list[dict]:
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(seed)
    resnet = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=data.num_classes)
    resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # one input channel
    model = Reshaped(resnet, (1, 1, 40))
    states = ["model.maxpool", "model.layer*.*"]
    frozen_acc = frozen_accuracy(pytest_fa.adapt(copy.deepcopy(model), states, head="model.fc"), states[1], data,
                                 epochs, seed)
    fit(model, data, epochs, seed, backprop(model))
    return [row("torchvision ResNet bp", "MNIST-1D", pytest_fa.adapt(model, states, head="model.fc"), data, frozen_acc)]


def row(name: str, data_name: str, model: nn.Module, data, frozen_acc: float, **check) -> dict:
    test = (data.x_test, data.y_test)
    report = pytest_fa.check(model, test, frozen_acc=frozen_acc, **check)
    gammas = [g for g in report.gamma_per_layer if g is not None]
    a, b, d = (report.diagnostics[k] for k in "abd")
    return {
        "model": name, "data": data_name, "acc": report.headline_acc, "frozen": frozen_acc,
        "growth": a.value, "a": a.fires, "g_L": b.value, "b": b.fires, "margin": d.value,
        "gamma": (min(gammas), max(gammas)) if gammas else None, "verdict": report.verdict,
    }


def table(rows: list[dict]) -> str:
    lines = ["| model | data | test acc | frozen acc | (a) growth | (b) ‖g_L‖@128 | (d) margin | Γ_l min … max "
             "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gamma = "unavailable" if r["gamma"] is None else f"{r['gamma'][0]:+.3f} … {r['gamma'][1]:+.3f}"
        lines.append(
            f"| {r['model']} | {r['data']} | {r['acc']:.3f} | {r['frozen']:.3f} | {r['growth']:.3g}×"
            f"{' fires' if r['a'] else ''} | {r['g_L']:.3g}{' fires' if r['b'] else ''} | {r['margin']:+.1f} pp | "
            f"{gamma} | {r['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="MNIST-1D epochs")
    parser.add_argument("--fashion-epochs", type=int, default=3, help="Fashion-MNIST epochs (0: skip)")
    parser.add_argument("--samples", type=int, default=60000, help="MNIST-1D samples (80 %% train)")
    parser.add_argument("--fashion-limit", type=int, default=None, help="Fashion-MNIST training samples")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mnist1d = load_dataset("mnist1d", num_samples=args.samples)
    rows = biotorch_rows(mnist1d, args.epochs, args.seed)
    rows += timm_rows("MNIST-1D", mnist1d, args.epochs, args.seed)
    rows += resnet_rows(mnist1d, args.epochs, args.seed)
    if args.fashion_epochs:
        limits = {"limit_train": args.fashion_limit} if args.fashion_limit else {}
        rows += timm_rows("Fashion-MNIST", load_dataset("fashion-mnist", **limits), args.fashion_epochs, args.seed)
    print(table(rows))
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
