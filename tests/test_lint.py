"""Tests of the static checker ``pytest_fa.lint`` (``--fa-lint`` / ``python -m pytest_fa.lint``).

Per rule: parametrised snippets that must be flagged (the expected line is the one marked
``# <-``) and look-alikes that must not. Then the planted sample ``tests/data/lint_sample.py``
(findings == its ``# expect:`` markers, line for line), the package itself (clean), the
command line, and the pytest plugin through ``pytester``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest

import pytest_fa
from pytest_fa import lint
from pytest_fa.lint import Finding, lint_file, lint_source, python_files

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "data" / "lint_sample.py"
PACKAGE = Path(pytest_fa.__file__).resolve().parent

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
MARK = "# <-"


def check(snippet: str) -> tuple[set[tuple[int, str]], list[Finding]]:
    """Lint ``HEADER + snippet``; return {(line, code)} and the findings, lines counted in the snippet."""
    source = HEADER + textwrap.dedent(snippet)
    offset = HEADER.count("\n")
    findings = lint_source(source, "snippet.py")
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
    (finding,) = lint_source("def f(x):\n    return x.norm(-1)\n", "a.py")
    assert (finding.path, finding.line, finding.col, finding.code, finding.pitfall) == ("a.py", 2, 14, "FA001", "1")
    assert "whole flattened tensor" in finding.message
    assert "x.norm(dim=-1)" in finding.message and "torch.linalg.vector_norm(x, dim=-1)" in finding.message
    assert str(finding).startswith("a.py:2:14: FA001 [pitfall 1] `x.norm(-1)`")


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


# --------------------------------------------------------------------------------------------
# suppression comments, ordering, FA000
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("comment", "kept"),
    [
        ("", {"FA001", "FA002"}),
        ("  # fa-lint: ignore", set()),
        ("  # fa-lint: ignore[FA001]", {"FA002"}),
        ("  # fa-lint: ignore[FA001, FA002]", set()),
        ("  # fa-lint: ignore[FA003]", {"FA001", "FA002"}),
        ("  # noqa: E501  # fa-lint: ignore[fa002]", {"FA001"}),
        ("  # fa-lint: ignore -- but not at the end", {"FA001", "FA002"}),
    ],
)
def test_suppression_comment(comment, kept):
    source = HEADER + f"F.cosine_similarity(x.norm(-1), p.grad){comment}\n"
    assert {f.code for f in lint_source(source)} == kept


def test_suppression_on_the_last_line_of_a_multi_line_call():
    source = HEADER + "c = F.cosine_similarity(\n    a,\n    p.grad)  # fa-lint: ignore\n"
    assert lint_source(source) == []


def test_a_suppression_inside_a_string_does_not_count():
    source = HEADER + "n = x.norm(-1); s = '# fa-lint: ignore'\n"
    assert [f.code for f in lint_source(source)] == ["FA001"]


def test_findings_are_sorted_and_columns_are_one_based_characters():
    source = "é = 'ü'; n = x.norm(-1)\nm = y.norm(2); k = z.norm(-1)\n"
    findings = lint_source(source)
    assert [(f.line, f.col) for f in findings] == [(1, 16), (2, 7), (2, 22)]


def test_a_file_that_does_not_parse_is_one_fa000_finding(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n    return 1\n")
    (finding,) = lint_file(bad)
    assert (finding.path, finding.line, finding.code) == (str(bad), 1, "FA000")
    assert finding.col >= 1 and "cannot parse" in finding.message
    undecodable = tmp_path / "latin.py"
    undecodable.write_bytes(b"x = '\xe9'\n")
    (finding,) = lint_file(undecodable)
    assert finding.code == "FA000"
    with pytest.raises(SyntaxError):
        lint_source("def f(:\n")


def test_deeply_nested_expressions_are_checked_not_crashed(tmp_path):
    source = "x = " + " + ".join(["a"] * 600) + " + h.norm(-1)\n"
    assert [f.code for f in lint_source(source)] == ["FA001"]
    too_deep = tmp_path / "deep.py"
    too_deep.write_text("x = " + "(" * 5000 + "1" + ")" * 5000 + "\n")
    assert [f.code for f in lint_file(too_deep)] == ["FA000"]


def test_encoding_cookie_and_bom_are_honoured(tmp_path):
    latin = tmp_path / "latin.py"
    latin.write_bytes(b"# -*- coding: latin-1 -*-\ns = '\xe9'\nn = x.norm(-1)\n")
    bom = tmp_path / "bom.py"
    bom.write_bytes(b"\xef\xbb\xbfn = x.norm(-1)\n")
    assert [(f.line, f.code) for f in lint_file(latin)] == [(3, "FA001")]
    assert [(f.line, f.code) for f in lint_file(bom)] == [(1, "FA001")]


# --------------------------------------------------------------------------------------------
# the planted sample
# --------------------------------------------------------------------------------------------


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


def test_sample_findings_are_exactly_the_planted_pitfalls():
    expected = expect_markers(SAMPLE)
    found = {(f.line, f.code) for f in lint_file(SAMPLE)}
    assert {code for _, code in expected} == {"FA001", "FA002", "FA003", "FA004"}
    for code in ("FA001", "FA002", "FA003", "FA004"):
        assert sum(c == code for _, c in expected) >= 3, f"too few planted {code}"
    assert not found - expected, f"false positives: {sorted(found - expected)}"
    assert not expected - found, f"missed: {sorted(expected - found)}"


def test_sample_is_not_collected_as_a_test():
    assert not SAMPLE.name.startswith("test_") and not SAMPLE.stem.endswith("_test")


# --------------------------------------------------------------------------------------------
# the package itself
# --------------------------------------------------------------------------------------------


def test_the_package_is_clean():
    """pytest_fa/ has no finding: the pitfall modules' deliberate naive reproducers carry
    ``# fa-lint: ignore[...]``, so anything found is a real pitfall in pytest-fa's own code."""
    files = python_files([PACKAGE])
    assert len(files) > 10 and any(f.name.startswith("pitfall_") for f in files)
    findings = [str(f) for file in files for f in lint_file(file)]
    assert not findings, "\n".join(findings)


# --------------------------------------------------------------------------------------------
# file discovery and the command line
# --------------------------------------------------------------------------------------------


def test_python_files_walks_sorted_and_skips_what_is_not_source(tmp_path):
    for rel in (
        "b.py", "a.py", "notes.txt", "pkg/c.py", ".hidden/h.py", "pkg/__pycache__/c.cpython-311.py",
        "venv/lib/v.py", "lib/site-packages/s.py", ".hidden.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    script = tmp_path / "run_eval"
    script.write_text("x = 1\n")
    files = python_files([tmp_path, tmp_path / "a.py", script])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a.py", "b.py", "pkg/c.py", "run_eval"]
    with pytest.raises(FileNotFoundError):
        python_files([tmp_path / "missing"])


def test_main_exit_codes(tmp_path, capsys):
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "ok.py").write_text("def f(x):\n    return x.norm(dim=-1)\n")
    assert lint.main([str(clean)]) == 0
    assert capsys.readouterr().out == ""

    dirty = tmp_path / "dirty"
    dirty.mkdir()
    shutil.copy(SAMPLE, dirty / SAMPLE.name)
    assert lint.main([str(clean), str(dirty)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == len(lint_file(SAMPLE))
    assert all(re.match(rf"{re.escape(str(dirty / SAMPLE.name))}:\d+:\d+: FA00[1-4] \[pitfall (1|2|3|B3)\] ", l)
               for l in lines)
    assert "1 of 2 file(s)" in err

    assert lint.main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert lint.main([]) == 2


def test_python_dash_m(tmp_path):
    (tmp_path / "bad.py").write_text("x = x.norm(-1)\n")
    run = subprocess.run([sys.executable, "-m", "pytest_fa.lint", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stdout.startswith(f"{tmp_path / 'bad.py'}:1:7: FA001 [pitfall 1] ")
    assert "torch" not in run.stderr


def test_no_torch_import():
    code = "import sys, pytest_fa.lint as l; l.lint_source('x.norm(-1)'); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False", run.stderr


# --------------------------------------------------------------------------------------------
# the plugin: --fa-lint
# --------------------------------------------------------------------------------------------

# The inner sessions need neither the cache nor hypothesis, whose import dominates their start-up
# (pytester restores sys.modules after every in-process run, so it would be imported each time).
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def test_plugin_fails_on_the_sample_with_the_findings(pytester):
    folder = pytester.mkdir("src")
    shutil.copy(SAMPLE, folder / SAMPLE.name)
    result = pytester.runpytest(*QUIET, "--fa-lint=src")
    assert result.ret == 1
    result.assert_outcomes(failed=1)
    copied = folder / SAMPLE.name
    expected = sorted(lint_file(copied), key=lambda f: (f.line, f.col))
    result.stdout.re_match_lines([re.escape(str(f)) + "$" for f in expected], consecutive=True)
    assert {(f.line, f.code) for f in expected} == expect_markers(SAMPLE)


def test_plugin_passes_on_a_clean_folder(pytester):
    pytester.makepyfile(**{"clean/ok": "def f(x):\n    return x.norm(dim=-1)\n"})
    result = pytester.runpytest(*QUIET, "--fa-lint=clean")
    assert result.ret == 0
    result.assert_outcomes(passed=1)


def test_plugin_reports_a_missing_path_as_a_usage_error(pytester):
    result = pytester.runpytest(*QUIET, "--fa-lint=missing/")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fa-lint=missing/: no such file or folder*"])


def test_a_symlink_loop_is_named_by_the_command_line_and_is_a_usage_error_of_the_plugin(pytester, capsys):
    folder = pytester.mkdir("src")
    (folder / "ok.py").write_text("x = 1\n")
    os.symlink("loop.py", folder / "loop.py")
    assert lint.main([str(folder)]) == 2
    assert f"fa-lint: error: {folder / 'loop.py'} is a symlink loop; remove the link or lint another folder" in capsys.readouterr().err
    result = pytester.runpytest_subprocess(*QUIET, "--fa-lint=src")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fa-lint=src: src/loop.py is a symlink loop; remove the link or lint another folder" in text
    assert "Traceback" not in text and "INTERNALERROR" not in text
    os.symlink("self", pytester.path / "self")
    result = pytester.runpytest_subprocess(*QUIET, "--fa-lint=self")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fa-lint=self is a symlink loop; give the path of a real file or folder" in result.stderr.str()
