"""How a token model's residual stream reads under each pooling: (a) and (b) for BP and DFA ViTs.

    python examples/token_states.py --samples 60000 --epochs 4

Trains on MNIST-1D (40 features as 10 patches of 4): the project's ``vit-mini`` with BP and
with DFA (``pytest_fa.training.trainer.train``), and a tiny timm ``VisionTransformer`` (input
``(1, 1, 40)``, ``(1, 4)`` patches, cls token read by its head) with BP in a plain loop. Each
model is then read on 8 eval batches of 128 test samples under the three readings of its
token states ``(B, T, d)``: the cls token (``pooling="cls"``), the mean over tokens
(``"mean"``) and all tokens (``"all"``, the default: ``‖h_l‖`` and ``‖g_l‖`` per sample
over its ``T·d`` values). For each: ``‖h_0‖`` (median), (a) the largest block growth of the median ``‖h_l‖``
and (b) the median ``‖g_L‖`` restated at batch 128, with the verdict of each at the
default thresholds (50×, 1e-7). Prints a Markdown table; one torch thread unless told.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch
import torch.nn.functional as F

from pytest_fa.core.adapter import adapt
from pytest_fa.core.report import diagnose
from pytest_fa.training.data import eval_batches, load_dataset
from pytest_fa.training.trainer import Recipe, train

READINGS = (("cls", "tokens"), ("mean", "tokens_mean"), ("all", "tokens_all"))


def timm_vit(num_classes: int, d: int, depth: int):
    """A tiny timm ViT on ``(1, 1, 40)`` inputs: 10 patches of ``(1, 4)`` plus the cls token."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=(1, 40), patch_size=(1, 4), in_chans=1, num_classes=num_classes,
                             embed_dim=d, depth=depth, num_heads=4, mlp_ratio=2.0)


def train_timm(data, epochs: int, seed: int, d: int, depth: int):
    """BP with the paper's recipe (AdamW, lr 1e-3, weight decay 0.01, cosine, batch 128)."""
    torch.manual_seed(seed)
    model = timm_vit(data.num_classes, d, depth)
    recipe = Recipe()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    x_train = data.x_train.reshape(len(data.x_train), 1, 1, -1)
    steps = epochs * -(-len(x_train) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(x_train), generator=generator).split(recipe.batch_size):
            loss = F.cross_entropy(model(x_train[index]), data.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def accuracy(model, batches) -> float:
    with torch.no_grad():
        return sum(int((model(x).argmax(-1) == y).sum()) for x, y in batches) / sum(len(y) for _, y in batches)


def readings(name: str, model, batches, acc: float, timm_model: bool) -> list[dict]:
    """One row per reading: ‖h_0‖, (a) and (b) from the protocol's own report."""
    rows = []
    for pooling, layout in READINGS:
        if timm_model:
            read = adapt(model, ["norm_pre", "blocks.*"], norm="norm", head="head", pooling=pooling)
        else:
            read = model
            read.hidden_layout = layout  # the duck-typed contract: a declared layout wins
        report = diagnose(read, batches, null_draws=0)
        a, b = report.diagnostics["a"], report.diagnostics["b"]
        rows.append({
            "model": name, "acc": acc, "reading": pooling, "h0": report.layers[0].h_norm,
            "growth": a.value, "block": a.layer, "a": a.fires, "g": b.value, "b": b.fires,
            "submode": b.submode, "gain": b.components.get("gain"),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60000, help="MNIST-1D samples (80 %% train)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timm-d", type=int, default=64)
    parser.add_argument("--timm-depth", type=int, default=4)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist1d", num_samples=args.samples, seed=args.seed)
    batches = eval_batches(data, 8, 128, seed=0)
    image_batches = [(x.reshape(len(x), 1, 1, -1), y) for x, y in batches]
    rows, times = [], {}
    for method in ("bp", "dfa"):
        start = time.perf_counter()
        model = train(data, method, arch="vit-mini", epochs=args.epochs, seed=args.seed, monitor=False).model.eval()
        times[f"vit-mini {method}"] = time.perf_counter() - start
        rows += readings(f"vit-mini {method}", model, batches, accuracy(model, batches), False)
    if importlib.util.find_spec("timm") is None:
        print("timm is not installed: the timm ViT is left out", file=sys.stderr)
    else:
        start = time.perf_counter()
        model = train_timm(data, args.epochs, args.seed, args.timm_d, args.timm_depth)
        times["timm ViT bp"] = time.perf_counter() - start
        rows += readings("timm ViT bp", model, image_batches, accuracy(model, image_batches), True)
    print(f"MNIST-1D {args.samples} samples, {args.epochs} epochs, seed {args.seed}, {args.threads} thread(s); "
          "8 eval batches of 128; thresholds (a) 50×, (b) 1e-7 at batch 128")
    print()
    print("| model | test acc | reading | median ‖h_0‖ | (a) growth (block) | (a) | (b) ‖g_L‖@128 | (b) gain_L | (b) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        growth = "undefined" if r["growth"] is None else f"{r['growth']:.3g}× ({r['block']})"
        gain = "—" if r["gain"] is None else f"{r['gain']:.3g}"
        print(f"| {r['model']} | {r['acc']:.3f} | {r['reading']} | {r['h0']:.3g} | {growth} | "
              f"{'FIRES' if r['a'] else 'ok'} | {r['g']:.3g} | {gain} | "
              f"{'FIRES' if r['b'] else 'ok'} ({r['submode']}) |")
    print()
    print("training seconds: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
