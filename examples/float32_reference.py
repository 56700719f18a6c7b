"""How far a float32 BP reference can be trusted as a direction, as the output error vanishes.

    python examples/float32_reference.py runs/budget/e20/bp_s42.pt runs/budget/e40/bp_s42.pt

For every eval sample of each bundle: the relative error of the output error
``e = softmax − onehot`` that the float32 backward pass carried (against float64), and the
cosine between the float32 and the float64 reference ``g_l`` at the worst layer. Samples are
binned by that relative error; the table gives the smallest and the median cosine per bin.
The decomposed (b) keeps a sample in Γ only up to ``OUTPUT_ERROR_TOLERANCE``.
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F

from pytest_fa.core import diagnostics as D
from pytest_fa.core.interface import forward_hidden
from pytest_fa.training.checkpoint import load_checkpoint
from pytest_fa.training.data import dataset_from_spec, eval_batches

EDGES = (0.0, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, float("inf"))


def reference(model, x, y):
    """Per-sample rows of ``g_l`` and the output error ``B · dCE/dz`` the backward pass used."""
    logits, hiddens = forward_hidden(model, x)
    *grads, logit_grad = torch.autograd.grad(F.cross_entropy(logits, y), [*hiddens, logits])
    return [g.reshape(len(y), -1) for g in grads], logit_grad * len(y), logits


def measure(path: str):
    loaded = load_checkpoint(path)
    data = dataset_from_spec(loaded.bundle.data)
    model32 = loaded.model.eval()
    model64 = copy.deepcopy(model32).double()
    rel, worst = [], []
    for x, y in eval_batches(data, 8, 128, seed=0):
        g32, used, logits = reference(model32, x, y)
        g64, _, _ = reference(model64, x.double(), y)
        rel.append(D.output_error_rel_error(used, logits, y))
        cos = torch.stack([D.cosine_per_sample(a, b) for a, b in zip(g32, g64)])
        worst.append(cos.min(dim=0).values)
    return torch.cat(rel), torch.cat(worst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    rel, worst = map(torch.cat, zip(*(measure(p) for p in args.bundles)))
    print(f"{len(rel)} samples from {len(args.bundles)} bundles; tolerance {D.OUTPUT_ERROR_TOLERANCE:g}")
    print("| relative error of e | samples | min cos(g32, g64) | median |")
    print("|---|---|---|---|")
    for low, high in zip(EDGES, EDGES[1:]):
        inside = (rel >= low) & (rel < high)
        if inside.any():
            cos = worst[inside]
            print(f"| [{low:g}, {high:g}) | {int(inside.sum())} | {float(cos.min()):.4f} | {float(cos.median()):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
