"""Tests of the FA checks (``pytest_fa.lint``, a flake8 plugin) and of ``--fa-lint``.

Per rule: parametrised snippets that must be flagged (the expected line is the one marked
``# <-``) and look-alikes that must not, through the checker itself. Then, through flake8 with
pytest-fa's entry point: ``# noqa``, the planted sample ``tests/data/lint_sample.py`` (findings ==
its ``# expect:`` markers, line for line), the package itself (clean), and the pytest plugin
through ``pytester``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import NamedTuple

import pytest
from flake8.main.cli import main as flake8_main

import pytest_fa
from pytest_fa.lint import PITFALL, Checker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE = HERE / "data" / "lint_sample.py"
PACKAGE = Path(pytest_fa.__file__).resolve().parent

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
MARK = "# <-"


class Found(NamedTuple):
    line: int
    col: int  # 1-based, as flake8 prints it
    code: str
    pitfall: str
    message: str


def lint_source(source: str) -> list[Found]:
    """The checker's findings in ``source`` (no ``# noqa``: that is flake8's), by line and column."""
    found = []
    for line, col, text, _ in Checker(ast.parse(source), source.splitlines(True)).run():
        code, pitfall, message = re.fullmatch(r"(FA\d{3}) \[pitfall (\w+)\] (.*)", text, re.S).groups()
        found.append(Found(line, col + 1, code, pitfall, message))
    return sorted(found)


def check(snippet: str) -> tuple[set[tuple[int, str]], list[Found]]:
    """Lint ``HEADER + snippet``; return {(line, code)} and the findings, lines counted in the snippet."""
    source = HEADER + textwrap.dedent(snippet)
    offset = HEADER.count("\n")
    findings = lint_source(source)
    return {(f.line - offset, f.code) for f in findings}, findings


def marked_lines(snippet: str) -> set[int]:
    return {i for i, line in enumerate(textwrap.dedent(snippet).splitlines(), 1) if line.rstrip().endswith(MARK)}


def assert_flags(snippet: str, code: str) -> None:
    found, findings = check(snippet)
    expected = {(line, code) for line in marked_lines(snippet)}
    assert expected, "the snippet marks no line"
    assert found == expected, "\n".join(map(str, findings))


def assert_clean(snippet: str) -> None:
    found, findings = check(snippet)
    assert not found, "\n".join(map(str, findings))


# --------------------------------------------------------------------------------------------
# FA001: positional p / ord without dim
# --------------------------------------------------------------------------------------------

FA001_POSITIVE = {
    "method-minus-one": "def f(x):\n    return x.norm(-1)  # <-\n",
    "method-two": "def f(h):\n    return h.norm(2)  # <-\n",
    "method-float": "def f(h):\n    return h.norm(1.0)  # <-\n",
    "method-inf": "def f(h):\n    return h.norm(float('inf'))  # <-\n",
    "method-keepdim-no-dim": "def f(h):\n    return h.norm(-1, keepdim=True)  # <-\n",
    "method-chain": "def f(x):\n    return x.detach().double().norm(-1)  # <-\n",
    "in-comprehension": "def f(hs):\n    return [float(t.norm(-1)) for t in hs]  # <-\n",
    "torch-norm": "def f(x):\n    return torch.norm(x, -1)  # <-\n",
    "linalg-norm": "def f(x):\n    return torch.linalg.norm(x, -1)  # <-\n",
    "vector-norm-no-dim": "def f(x):\n    return torch.linalg.vector_norm(x, -1)  # <-\n",
    "aliased-torch": "import torch as T\ndef f(x):\n    return T.norm(x, 2)  # <-\n",
    "from-import": "from torch.linalg import norm as lnorm\ndef f(x):\n    return lnorm(x, 2)  # <-\n",
    "math-inf": "import math\ndef f(x):\n    return torch.linalg.vector_norm(x, math.inf)  # <-\n",
    "multi-line": "def f(h):\n    return (h\n            .norm(-1))  # <-\n",
    "module-level": "x = torch.randn(4, 3)\nn = x.norm(-1)  # <-\n",
}

FA001_NEGATIVE = {
    "dim-keyword": "def f(x):\n    return x.norm(dim=-1)",
    "p-and-dim-keywords": "def f(x):\n    return x.norm(p=2, dim=1)",
    "p-keyword-whole-tensor": "def f(x):\n    return x.norm(p=2)",
    "no-arguments": "def f(x):\n    return x.norm()",
    "positional-p-and-dim": "def f(x):\n    return x.norm(2, 1)",
    "positional-p-dim-keyword": "def f(x):\n    return x.norm(2, dim=1)",
    "fro-string": "def f(x):\n    return x.norm('fro')",
    "variable-p": "def f(x, p):\n    return x.norm(p)",
    "splat": "def f(x, kw):\n    return x.norm(2, **kw)",
    "vector-norm-ord-dim": "def f(x):\n    return torch.linalg.vector_norm(x, 2, -1)",
    "vector-norm-dim-keyword": "def f(x):\n    return torch.linalg.vector_norm(x, dim=-1)",
    "vector-norm-ord-keyword": "def f(x):\n    return torch.linalg.vector_norm(x, ord=2)",
    "torch-norm-with-dim": "def f(x):\n    return torch.norm(x, 2, 1)",
    "torch-norm-dim-keyword": "def f(x):\n    return torch.norm(x, dim=-1)",
    "linalg-norm-with-dim": "def f(x):\n    return torch.linalg.norm(x, 2, -1)",
    "matrix-norm": "def f(x):\n    return torch.linalg.matrix_norm(x, 2)",
    "layernorm-module": "class M(torch.nn.Module):\n    def forward(self, h):\n        return self.norm(h)",
    "numpy": "import numpy as np\ndef f(x):\n    return np.linalg.norm(x, 2)",
    "in-a-string": "DOC = 'never write x.norm(-1)'",
}


@pytest.mark.parametrize("snippet", FA001_POSITIVE.values(), ids=FA001_POSITIVE.keys())
def test_fa001_flags_positional_order_without_dim(snippet):
    assert_flags(snippet, "FA001")


@pytest.mark.parametrize("snippet", FA001_NEGATIVE.values(), ids=FA001_NEGATIVE.keys())
def test_fa001_leaves_explicit_norms_alone(snippet):
    assert_clean(snippet)


def test_fa001_message_names_the_pitfall_and_the_fix():
    (finding,) = lint_source("def f(x):\n    return x.norm(-1)\n")
    assert (finding.line, finding.col, finding.code, finding.pitfall) == (2, 14, "FA001", "1")
    assert "whole flattened tensor" in finding.message
    assert "x.norm(dim=-1)" in finding.message and "torch.linalg.vector_norm(x, dim=-1)" in finding.message
    assert finding.message.startswith("`x.norm(-1)`")


# --------------------------------------------------------------------------------------------
# FA002: cosine_similarity on gradients without eps
# --------------------------------------------------------------------------------------------

FA002_POSITIVE = {
    "param-grad": "def f(a, p):\n    return F.cosine_similarity(a, p.grad)  # <-\n",
    "grads-subscript": "def f(a, grads, l):\n    return F.cosine_similarity(a, grads[l], dim=1)  # <-\n",
    "grad-suffix-name": "def f(a, g_grad):\n    return torch.cosine_similarity(g_grad, a)  # <-\n",
    "full-path": "def f(a, grads):\n    return torch.nn.functional.cosine_similarity(a, grads[0])  # <-\n",
    "keyword-args": "def f(a, p):\n    return F.cosine_similarity(x1=a, x2=p.grad)  # <-\n",
    "inline-autograd": (
        "def f(a, loss, h):\n    return F.cosine_similarity(a, torch.autograd.grad(loss, h)[0])  # <-\n"
    ),
    "assigned-from-autograd": (
        "def f(model, a, x):\n"
        "    out = model(x)\n"
        "    g = torch.autograd.grad(out.sum(), x)[0]\n"
        "    return F.cosine_similarity(a, g)  # <-\n"
    ),
    "assigned-from-dot-grad": (
        "def f(a, h, loss):\n"
        "    loss.backward()\n"
        "    g = h.grad\n"
        "    flat = g.flatten(1)\n"
        "    return F.cosine_similarity(a, flat)  # <-\n"
    ),
    "from-autograd-import-grad": (
        "from torch.autograd import grad\n"
        "def f(a, loss, h):\n"
        "    (g,) = grad(loss, [h])\n"
        "    return F.cosine_similarity(a, g)  # <-\n"
    ),
    "zip-loop": (
        "def f(credits, loss, hs):\n"
        "    grads = torch.autograd.grad(loss, hs)\n"
        "    out = []\n"
        "    for a, g in zip(credits, grads):\n"
        "        out.append(F.cosine_similarity(a, g))  # <-\n"
        "    return out\n"
    ),
    "comprehension": (
        "def f(credits, loss, hs):\n"
        "    gs = torch.autograd.grad(loss, hs)\n"
        "    return [F.cosine_similarity(a, g) for a, g in zip(credits, gs)]  # <-\n"
    ),
    "module-instance": (
        "cos = nn.CosineSimilarity(dim=1)\n"
        "def f(a, p):\n"
        "    return cos(a, p.grad)  # <-\n"
    ),
    "module-inline": "def f(a, p):\n    return nn.CosineSimilarity(dim=1)(a, p.grad)  # <-\n",
    "module-attribute": (
        "class Probe(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.cos = nn.CosineSimilarity(dim=1)\n"
        "    def forward(self, a, grad_h):\n"
        "        return self.cos(a, grad_h)  # <-\n"
    ),
    "bare-import": (
        "from torch.nn.functional import cosine_similarity as cs\n"
        "def f(a, p):\n"
        "    return cs(a, p.grad)  # <-\n"
    ),
    "module-level-script": "g = w.grad\nprint(F.cosine_similarity(a, g))  # <-\n",
    "walrus": "def f(a, p):\n    if (g := p.grad) is not None:\n        return F.cosine_similarity(a, g)  # <-\n",
    "attribute-set-in-another-method": (
        "class Probe:\n"
        "    def measure(self, loss, h):\n"
        "        self.ref = torch.autograd.grad(loss, h)[0]\n"
        "    def gamma(self, a):\n"
        "        return F.cosine_similarity(a, self.ref)  # <-\n"
    ),
    "list-filled-with-gradients": (
        "def f(a, model):\n"
        "    store = []\n"
        "    for p in model.parameters():\n"
        "        store.append(p.grad.flatten())\n"
        "    return F.cosine_similarity(a, torch.cat(store), dim=0)  # <-\n"
    ),
}

FA002_NEGATIVE = {
    "eps-keyword": "def f(a, p):\n    return F.cosine_similarity(a, p.grad, dim=1, eps=1e-30)",
    "eps-positional": "def f(a, p):\n    return F.cosine_similarity(a, p.grad, 1, 1e-30)",
    "eps-in-module": "def f(a, p):\n    return nn.CosineSimilarity(dim=1, eps=0.0)(a, p.grad)",
    "eps-module-instance": "cos = nn.CosineSimilarity(1, 1e-30)\ndef f(a, p):\n    return cos(a, p.grad)",
    "splat-may-carry-eps": "def f(a, p, kw):\n    return F.cosine_similarity(a, p.grad, **kw)",
    "not-gradients": "def f(h0, h1):\n    return F.cosine_similarity(h0, h1, dim=1)",
    "requires-grad-is-not-a-gradient": "def f(h, a):\n    return F.cosine_similarity(h.requires_grad_(), a)",
    "no-grad-block": "def f(a, b):\n    with torch.no_grad():\n        return F.cosine_similarity(a, b)",
    "honest-cosine": (
        "from pytest_fa.core.diagnostics import cosine_per_sample\n"
        "def f(a, p):\n    return cosine_per_sample(a, p.grad)"
    ),
    "taint-does-not-cross-functions": (
        "def f(p):\n    g = p.grad\n    return g\n"
        "def h(a, g):\n    return F.cosine_similarity(a, g)"
    ),
    "sklearn": (
        "from sklearn.metrics.pairwise import cosine_similarity\n"
        "def f(a, grads):\n    return cosine_similarity(a, grads)"
    ),
    "own-helper": "def cosine_similarity(a, b):\n    return a @ b\ndef f(a, grads):\n    return cosine_similarity(a, grads)",
}


@pytest.mark.parametrize("snippet", FA002_POSITIVE.values(), ids=FA002_POSITIVE.keys())
def test_fa002_flags_clamped_cosines_on_gradients(snippet):
    assert_flags(snippet, "FA002")


@pytest.mark.parametrize("snippet", FA002_NEGATIVE.values(), ids=FA002_NEGATIVE.keys())
def test_fa002_leaves_explicit_eps_and_non_gradients_alone(snippet):
    assert_clean(snippet)


def test_fa002_message_names_the_fix():
    (finding,) = lint_source("import torch.nn.functional as F\nF.cosine_similarity(a, p.grad)\n")
    assert finding.code == "FA002" and finding.pitfall == "2"
    assert "eps" in finding.message and "pytest_fa.core.diagnostics.cosine_per_sample" in finding.message
    assert "float64" in finding.message and "undefined below the floor" in finding.message


# --------------------------------------------------------------------------------------------
# FA003: float16 gradients
# --------------------------------------------------------------------------------------------

FA003_POSITIVE = {
    "half": "def f(p):\n    return p.grad.half()  # <-\n",
    "to-dtype": "def f(grads):\n    return grads[0].to(torch.float16)  # <-\n",
    "to-dtype-keyword": "def f(p):\n    g = p.grad\n    return g.to(dtype=torch.half)  # <-\n",
    "to-device-and-dtype": "def f(g_grad):\n    return g_grad.to('cuda', torch.float16)  # <-\n",
    "type-halftensor": "def f(grads):\n    return grads[-1].type(torch.HalfTensor)  # <-\n",
    "type-string": "def f(grads):\n    return grads[-1].type('torch.cuda.HalfTensor')  # <-\n",
    "autocast-fp16-autograd": (
        "def f(model, x, y):\n"
        "    with torch.autocast('cuda', dtype=torch.float16):  # <-\n"
        "        logits, hs = model(x)\n"
        "        return torch.autograd.grad(F.cross_entropy(logits, y), hs)\n"
    ),
    "autocast-cuda-default": (
        "def f(model, x, y):\n"
        "    with torch.autocast(device_type='cuda'):  # <-\n"
        "        F.cross_entropy(model(x), y).backward()\n"
    ),
    "cuda-amp-autocast": (
        "def f(model, x, y):\n"
        "    with torch.cuda.amp.autocast():  # <-\n"
        "        loss = F.cross_entropy(model(x), y)\n"
        "        if loss.requires_grad:\n"
        "            loss.backward()\n"
    ),
    "imported-autocast": (
        "from torch.cuda.amp import autocast\n"
        "def f(model, x, y):\n"
        "    with autocast():  # <-\n"
        "        F.cross_entropy(model(x), y).backward()\n"
    ),
    "autocast-decorator": (
        "@torch.autocast('cuda', dtype=torch.float16)  # <-\n"
        "def f(model, x, y):\n"
        "    F.cross_entropy(model(x), y).backward()\n"
    ),
    "amp-autocast-fp16": (
        "def f(model, x, y):\n"
        "    with torch.amp.autocast('cuda', dtype=torch.half):  # <-\n"
        "        torch.autograd.backward(F.cross_entropy(model(x), y))\n"
    ),
}

FA003_NEGATIVE = {
    "model-half": "def f(model):\n    return model.half()",
    "activation-half": "def f(x):\n    return x.half()",
    "bf16": "def f(p):\n    return p.grad.to(torch.bfloat16)",
    "float32": "def f(p):\n    return p.grad.float()",
    "to-device": "def f(p):\n    return p.grad.to('cuda')",
    "bf16-autocast": (
        "def f(model, x, y):\n"
        "    with torch.autocast('cuda', dtype=torch.bfloat16):\n"
        "        F.cross_entropy(model(x), y).backward()"
    ),
    "cpu-autocast": (
        "def f(model, x, y):\n"
        "    with torch.autocast('cpu'):\n"
        "        F.cross_entropy(model(x), y).backward()"
    ),
    "fp16-forward-only": (
        "def f(model, x, y):\n"
        "    with torch.autocast('cuda', dtype=torch.float16):\n"
        "        loss = F.cross_entropy(model(x), y)\n"
        "    scaler.scale(loss).backward()"
    ),
    "disabled": (
        "def f(model, x, y):\n"
        "    with torch.cuda.amp.autocast(enabled=False):\n"
        "        F.cross_entropy(model(x), y).backward()"
    ),
    "nested-disable": (
        "def f(model, x, y):\n"
        "    with torch.autocast('cuda', dtype=torch.float16):\n"
        "        logits = model(x)\n"
        "        with torch.autocast('cuda', enabled=False):\n"
        "            F.cross_entropy(logits.float(), y).backward()"
    ),
    "closure-defined-not-run": (
        "def f(model, x, y, opt):\n"
        "    with torch.autocast('cuda', dtype=torch.float16):\n"
        "        def closure():\n"
        "            F.cross_entropy(model(x), y).backward()\n"
        "    return closure"
    ),
    "unknown-device": (
        "def f(model, x, y, device):\n"
        "    with torch.autocast(device):\n"
        "        F.cross_entropy(model(x), y).backward()"
    ),
}


@pytest.mark.parametrize("snippet", FA003_POSITIVE.values(), ids=FA003_POSITIVE.keys())
def test_fa003_flags_float16_gradients(snippet):
    assert_flags(snippet, "FA003")


@pytest.mark.parametrize("snippet", FA003_NEGATIVE.values(), ids=FA003_NEGATIVE.keys())
def test_fa003_leaves_other_precisions_alone(snippet):
    assert_clean(snippet)


def test_fa003_autocast_message_points_at_the_gradient_call():
    source = HEADER + "with torch.autocast('cuda', dtype=torch.float16):\n    y = f(x)\n    y.backward()\n"
    (finding,) = lint_source(source)
    assert (finding.line, finding.col, finding.pitfall) == (4, 12, "3")  # at `autocast`
    assert "y.backward(...)` at line 6" in finding.message
    assert "bfloat16" in finding.message and "float32" in finding.message


# --------------------------------------------------------------------------------------------
# FA004: cosines across batches
# --------------------------------------------------------------------------------------------

DP = "from pytest_fa.core.diagnostics import cosine_per_sample\n"

FA004_POSITIVE = {
    "two-next-calls": (
        "def f(model, credit_fn, loader):\n"
        "    it = iter(loader)\n"
        "    xa, ya = next(it)\n"
        "    xb, yb = next(it)\n"
        "    ref = model(xa).detach()\n"
        "    cand = credit_fn(model, xb, yb)\n"
        "    return F.cosine_similarity(cand, ref, eps=0)  # <-\n"
    ),
    "indexed-batches": DP + (
        "def f(model, batches):\n"
        "    x0, y0 = batches[0]\n"
        "    x1, y1 = batches[1]\n"
        "    return cosine_per_sample(model(x0), model(x1))  # <-\n"
    ),
    "loop-vs-fixed": DP + (
        "def f(model, loader):\n"
        "    x_ref, _ = next(iter(loader))\n"
        "    ref = model(x_ref)\n"
        "    out = []\n"
        "    for x, y in loader:\n"
        "        out.append(cosine_per_sample(model(x), ref))  # <-\n"
        "    return out\n"
    ),
    "enumerate-loader": DP + (
        "def f(model, train_dl, x_ref):\n"
        "    ref = model(next(iter(train_dl))[0])\n"
        "    for i, (x, y) in enumerate(train_dl):\n"
        "        cos = cosine_per_sample(model(x), ref)  # <-\n"
    ),
    "comprehension": DP + (
        "def f(model, loader, it):\n"
        "    ref = model(next(it)[0])\n"
        "    return [cosine_per_sample(model(x), ref) for x, _ in loader]  # <-\n"
    ),
    "module-instance": (
        "cos = nn.CosineSimilarity(dim=1, eps=0)\n"
        "def f(model, eval_batches):\n"
        "    a = model(eval_batches[0][0])\n"
        "    b = model(eval_batches[-1][0])\n"
        "    return cos(a, b)  # <-\n"
    ),
    "shuffled-loader-read-twice": DP + (
        "def f(model, ds, credit):\n"
        "    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True)\n"
        "    x_ref, _ = next(iter(loader))\n"
        "    x, y = next(iter(loader))\n"
        "    return cosine_per_sample(credit(x, y), model(x_ref))  # <-\n"
    ),
    "two-passes-over-a-shuffled-loader": DP + (
        "def f(model, ds, credit):\n"
        "    loader = torch.utils.data.DataLoader(ds, shuffle=True)\n"
        "    refs = [model(x) for x, _ in loader]\n"
        "    cands = [credit(x) for x, _ in loader]\n"
        "    return [cosine_per_sample(c, r) for c, r in zip(cands, refs)]  # <-\n"
    ),
    "list-of-gradients-from-loop": DP + (
        "def f(model, loader, credit):\n"
        "    refs = []\n"
        "    for x, y in loader:\n"
        "        refs.append(model(x))\n"
        "    held_out = next(iter(loader))\n"
        "    return cosine_per_sample(credit(held_out), refs[0])  # <-\n"
    ),
}

FA004_NEGATIVE = {
    "same-batch": DP + (
        "def f(model, loader, credit):\n"
        "    x, y = next(iter(loader))\n"
        "    return cosine_per_sample(credit(x, y), model(x))"
    ),
    "x-and-y-of-one-batch": DP + (
        "def f(model, loader, credit):\n"
        "    batch = next(iter(loader))\n"
        "    x, y = batch[0], batch[1]\n"
        "    return cosine_per_sample(credit(y), model(x))"
    ),
    "same-index": DP + (
        "def f(model, batches, credit):\n"
        "    ref = model(batches[0][0])\n"
        "    return cosine_per_sample(credit(batches[0]), ref)"
    ),
    "inside-one-loop": DP + (
        "def f(model, loader, credit):\n"
        "    for x, y in loader:\n"
        "        g = model(x)\n"
        "        yield cosine_per_sample(credit(x, y), g)"
    ),
    "unknown-origin": DP + (
        "def f(model, x_ref, x_cand, credit):\n"
        "    return cosine_per_sample(credit(x_cand), model(x_ref))"
    ),
    "one-side-unknown": DP + (
        "def f(model, loader, ref):\n"
        "    x, y = next(iter(loader))\n"
        "    return cosine_per_sample(model(x), ref)"
    ),
    "either-branch": DP + (
        "def f(model, batches, first):\n"
        "    if first:\n"
        "        x = batches[0]\n"
        "    else:\n"
        "        x = batches[1]\n"
        "    return cosine_per_sample(model(x), model(batches[0]))"
    ),
    "variable-index": DP + (
        "def f(model, batches, i, j):\n"
        "    return cosine_per_sample(model(batches[i]), model(batches[j]))"
    ),
    "parameters-are-not-batches": DP + (
        "def f(model, loader, credit):\n"
        "    x, y = next(iter(loader))\n"
        "    w = next(model.parameters())\n"
        "    for p in model.parameters():\n"
        "        yield cosine_per_sample(credit(x), p.flatten())\n"
        "    yield cosine_per_sample(credit(x), w)"
    ),
    "range-loop": DP + (
        "def f(model, loader, credit, hs, gs):\n"
        "    x, y = next(iter(loader))\n"
        "    for l in range(len(hs)):\n"
        "        yield cosine_per_sample(credit(x)[l], gs[l])"
    ),
    "fresh-iterator-of-an-unknown-loader": DP + (
        "def f(model, loader, credit):\n"
        "    x_ref, _ = next(iter(loader))  # the first batch, twice, unless it shuffles\n"
        "    x, y = next(iter(loader))\n"
        "    return cosine_per_sample(credit(x, y), model(x_ref))"
    ),
    "two-passes-over-one-list": DP + (
        "def f(model, eval_batches, credit):\n"
        "    refs = [model(x) for x, _ in eval_batches]\n"
        "    cands = [credit(x) for x, _ in eval_batches]\n"
        "    return [cosine_per_sample(c, r) for c, r in zip(cands, refs)]"
    ),
    "layers-of-one-batch": DP + (
        "def f(model, eval_batches, credit):\n"
        "    for x, y in eval_batches:\n"
        "        hs = model(x)\n"
        "        rows = [cosine_per_sample(a, h) for a, h in zip(credit(x), hs)]"
    ),
}


@pytest.mark.parametrize("snippet", FA004_POSITIVE.values(), ids=FA004_POSITIVE.keys())
def test_fa004_flags_cosines_across_batches(snippet):
    assert_flags(snippet, "FA004")


@pytest.mark.parametrize("snippet", FA004_NEGATIVE.values(), ids=FA004_NEGATIVE.keys())
def test_fa004_is_silent_on_one_batch_or_when_unsure(snippet):
    assert_clean(snippet)


def test_fa004_message_names_both_batches():
    (finding,) = lint_source(HEADER + FA004_POSITIVE["two-next-calls"])
    assert finding.pitfall == "B3"
    assert "`next(it)` at line 6" in finding.message and "`next(it)` at line 7" in finding.message
    assert "same forward pass" in finding.message


def test_findings_are_sorted_and_columns_are_one_based_characters():
    source = "é = 'ü'; n = x.norm(-1)\nm = y.norm(2); k = z.norm(-1)\n"
    findings = lint_source(source)
    assert [(f.line, f.col) for f in findings] == [(1, 16), (2, 7), (2, 22)]


def test_each_pitfall_lint_code_is_reported_under_its_pitfall():
    findings = lint_source(SAMPLE.read_text(encoding="utf-8"))
    assert sorted({f.code for f in findings}) == sorted(PITFALL) == ["FA001", "FA002", "FA003", "FA004"]
    assert all(f.pitfall == PITFALL[f.code] for f in findings)


def test_no_torch_import():
    code = ("import ast, sys; from pytest_fa.lint import Checker; "
            "print(len(list(Checker(ast.parse('x.norm(-1)'), ['x.norm(-1)']).run())), 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["1", "False"], run.stderr


# --------------------------------------------------------------------------------------------
# through flake8: the entry point, # noqa, the planted sample, the package itself
# --------------------------------------------------------------------------------------------


def entry_point_dist(folder: Path) -> Path:
    """A folder holding pytest-fa's metadata with the ``flake8.extension`` entry points that
    pyproject.toml declares. First on the path, it is the pytest-fa flake8 loads (flake8 takes
    one distribution per name), whatever metadata an earlier install left."""
    text = (ROOT / "pyproject.toml").read_text()
    header = '[project.entry-points."flake8.extension"]\n'
    assert header in text, "pyproject.toml registers no flake8 plugin"
    entries = text.split(header, 1)[1].split("\n\n", 1)[0].replace('"', "")
    assert entries.strip() == "FA = pytest_fa.lint:Checker"
    info = folder / "pytest_fa-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-fa\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[flake8.extension]\n{entries}\n")
    return folder


@pytest.fixture
def entry_point(tmp_path, monkeypatch):
    """pytest-fa's flake8 entry point on ``sys.path`` and ``PYTHONPATH``."""
    folder = entry_point_dist(tmp_path / "entry-point")
    monkeypatch.syspath_prepend(folder)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return folder


@pytest.fixture
def flake8(entry_point, tmp_path):
    """``flake8 --isolated --select=FA,E9 ARGS`` in this process: (exit status, output lines)."""
    def run(*args) -> tuple[int, list[str]]:
        out = tmp_path / "flake8.txt"
        out.unlink(missing_ok=True)
        status = flake8_main(["--isolated", "--select=FA,E9", "--jobs=1", f"--output-file={out}", *map(str, args)])
        return status, out.read_text().splitlines()
    return run


def codes(lines: list[str]) -> set[tuple[int, str]]:
    """(line, code) of each ``path:line:col: CODE text`` line."""
    return {(int(m[1]), m[2]) for m in (re.match(r".*?:(\d+):\d+: (\w+) ", line) for line in lines)}


def test_flake8_prints_the_findings_of_the_checker(flake8, tmp_path):
    file = tmp_path / "a.py"
    file.write_text("def f(x):\n    return x.norm(-1)\n")
    status, lines = flake8(file)
    (finding,) = lint_source(file.read_text())
    assert status == 1
    assert lines == [f"{file}:2:14: FA001 [pitfall 1] {finding.message}"]


@pytest.mark.parametrize(
    ("comment", "kept"),
    [
        ("", {"FA001", "FA002"}),
        ("  # noqa", set()),
        ("  # noqa: FA001", {"FA002"}),
        ("  # noqa: FA001, FA002", set()),
        ("  # noqa: FA003", {"FA001", "FA002"}),
        ("  # noqa: E501,FA002", {"FA001"}),
        ("  # noqa: FA", set()),
    ],
)
def test_noqa(flake8, tmp_path, comment, kept):
    file = tmp_path / "snippet.py"
    file.write_text(HEADER + f"F.cosine_similarity(x.norm(-1), p.grad){comment}\n")
    status, lines = flake8(file)
    assert codes(lines) == {(4, code) for code in kept}
    assert status == (1 if kept else 0)


def test_encoding_cookie_and_bom_are_honoured(flake8, tmp_path):
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"# -*- coding: latin-1 -*-\ns = '\xe9'\nn = x.norm(-1)\n")
    bom = tmp_path / "bom.py"
    bom.write_bytes(b"\xef\xbb\xbfn = x.norm(-1)\n")
    assert codes(flake8(latin)[1]) == {(3, "FA001")}
    assert codes(flake8(bom)[1]) == {(1, "FA001")}


def expect_markers(path: Path) -> set[tuple[int, str]]:
    """(line, code) for every ``# expect: FA00N[, FA00M]`` comment (comments only, not strings)."""
    out = set()
    with tokenize.open(path) as handle:
        for token in tokenize.generate_tokens(handle.readline):
            if token.type == tokenize.COMMENT:
                match = re.search(r"expect:\s*(FA\d{3}(?:\s*,\s*FA\d{3})*)", token.string)
                if match:
                    out |= {(token.start[0], code.strip()) for code in match.group(1).split(",")}
    return out


def test_sample_findings_are_exactly_the_planted_pitfalls(flake8):
    expected = expect_markers(SAMPLE)
    found = codes(flake8(SAMPLE)[1])
    assert {code for _, code in expected} == {"FA001", "FA002", "FA003", "FA004"}
    for code in ("FA001", "FA002", "FA003", "FA004"):
        assert sum(c == code for _, c in expected) >= 3, f"too few planted {code}"
    assert not found - expected, f"false positives: {sorted(found - expected)}"
    assert not expected - found, f"missed: {sorted(expected - found)}"


def test_sample_is_not_collected_as_a_test():
    assert not SAMPLE.name.startswith("test_") and not SAMPLE.stem.endswith("_test")


def test_the_package_is_clean(flake8):
    """pytest_fa/ has no finding: the pitfall modules' deliberate naive reproducers carry
    ``# noqa: FA00N``, so anything found is a real pitfall in pytest-fa's own code. (flake8 runs
    on the files the checker flags; on the others it has nothing to report.)"""
    flagged = sorted(f.name for f in PACKAGE.rglob("*.py") if lint_source(f.read_text(encoding="utf-8")))
    assert flagged == ["pitfall_fp16_underflow.py", "pitfall_missing_feedback.py", "pitfall_norm_minus_one.py"]
    assert flake8(*(PACKAGE / "pitfalls" / name for name in flagged)) == (0, [])


# --------------------------------------------------------------------------------------------
# the plugin: --fa-lint
# --------------------------------------------------------------------------------------------

# The inner sessions need neither the cache nor hypothesis, whose import dominates their start-up
# (pytester restores sys.modules after every in-process run, so it would be imported each time).
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def test_plugin_fails_on_the_sample_with_the_findings(pytester, flake8):
    folder = pytester.mkdir("src")
    copied = folder / SAMPLE.name
    shutil.copy(SAMPLE, copied)
    (folder / "ok.py").write_text("def f(x):\n    return x.norm(dim=-1)\n")
    result = pytester.runpytest(*QUIET, "--fa-lint=src")
    assert result.ret == 1
    result.assert_outcomes(failed=1, passed=1)
    status, expected = flake8(copied.resolve())
    assert status == 1 and codes(expected) == expect_markers(SAMPLE)
    result.stdout.re_match_lines([re.escape(line) + "$" for line in expected], consecutive=True)


def test_plugin_passes_on_a_clean_folder(pytester, entry_point):
    pytester.makepyfile(**{"clean/ok": "def f(x):\n    return x.norm(dim=-1)\n"})
    result = pytester.runpytest(*QUIET, "--fa-lint=clean")
    assert result.ret == 0
    result.assert_outcomes(passed=1)


def test_plugin_reports_a_missing_path_as_a_usage_error(pytester):
    result = pytester.runpytest(*QUIET, "--fa-lint=missing/")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fa-lint=missing/: no such file or folder*"])


def test_plugin_without_flake8_is_a_usage_error_that_says_what_to_install(pytester, monkeypatch):
    pytester.makepyfile(**{"src/ok": "x = 1\n"})
    monkeypatch.setitem(sys.modules, "flake8", None)  # import flake8 fails
    result = pytester.runpytest(*QUIET, "--fa-lint=src")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fa-lint runs flake8, which is not installed: pip install pytest-fa[lint]" in result.stderr.str()


def test_plugin_without_the_entry_point_is_a_usage_error(pytester, monkeypatch):
    """An install that predates the entry point would pass every file: flake8 runs no FA check."""
    pytester.makepyfile(**{"src/ok": "x = 1\n"})
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    result = pytester.runpytest(*QUIET, "--fa-lint=src")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fa-lint: flake8 does not know pytest-fa's FA checks; reinstall pytest-fa*"])


def test_plugin_fails_a_file_flake8_cannot_read_parse_or_check(pytester, entry_point):
    """A file that does not parse is flake8's E999, a symlink loop its E902, a file that makes a
    check crash (a sum of 600 terms: pyflakes recurses once per term) flake8's own message, one
    too deep for Python's parser a message that says so."""
    folder = pytester.mkdir("src")
    (folder / "bad.py").write_text("def f(:\n    return 1\n")
    os.symlink("loop.py", folder / "loop.py")
    (folder / "deep.py").write_text("x = " + " + ".join(["a"] * 600) + "\n")
    (folder / "deeper.py").write_text("x = " + " + ".join(["a"] * 20_000) + "\n")  # too deep for ast.parse
    result = pytester.runpytest(*QUIET, "--fa-lint=src")
    text = result.stdout.str()
    result.assert_outcomes(failed=4)
    assert f"{folder / 'bad.py'}:1:" in text and ": E999 SyntaxError:" in text
    assert f"{folder / 'loop.py'}:0:1: E902 OSError:" in text and "Too many levels of symbolic links" in text
    assert "flake8 could not check this file: see its output below" in text
    assert "failed during execution due to RecursionError" in text
    assert f"{folder / 'deeper.py'}: flake8 cannot check this file: an expression is nested too deeply" in text
    assert "INTERNALERROR" not in text and "during ast construction" not in text  # no raw RecursionError


def test_a_symlink_loop_as_the_path_is_a_usage_error(pytester):
    os.symlink("self", pytester.path / "self")
    result = pytester.runpytest_subprocess(*QUIET, "--fa-lint=self")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fa-lint=self is a symlink loop; give the path of a real file or folder" in result.stderr.str()


@pytest.mark.parametrize("index", ["-math.inf", "+float('nan')", "float('inf')"])
def test_a_batches_index_that_is_not_a_literal_is_read_not_a_crash(index):
    """``literal_eval`` refuses ``-math.inf``: the index is named by its source text."""
    lines, _ = check(f"""
    first = eval_batches[{index}]
    second = eval_batches[{index}]
    """)
    assert lines == set()
