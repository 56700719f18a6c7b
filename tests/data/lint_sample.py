"""Alignment evaluation of a DFA-trained MLP, as a user might write it.

Sample input for ``tests/test_lint.py``; it is never imported or run. Every line that carries a
planted pitfall ends with ``# expect: FA00N`` (several codes: ``# expect: FA002, FA004``); every
other line, look-alikes included, must stay clean.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.cuda.amp import autocast
from torch.linalg import vector_norm

from pytest_fa.core.diagnostics import cosine_per_sample

NUM_CLASSES = 10


class ProbedMLP(nn.Module):
    def __init__(self, d_in: int, d: int, depth: int):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, NUM_CLASSES)
        self.cos = nn.CosineSimilarity(dim=1)
        self.exact_cos = nn.CosineSimilarity(dim=1, eps=1e-300)

    def forward(self, x, return_hidden=False):
        h = self.inp(x)
        hiddens = [h]
        for block in self.blocks:
            h = h + torch.relu(block(h))
            hiddens.append(h)
        logits = self.head(self.norm(h))
        return (logits, hiddens) if return_hidden else logits

    def alignment(self, credit, grad_h):
        clamped = self.cos(credit, grad_h)  # expect: FA002
        exact = self.exact_cos(credit, grad_h)
        between_credits = self.cos(credit, credit.roll(1, 0))
        return clamped, exact, between_credits


# --------------------------------------------------------------------------------------------
# norms (pitfall 1)
# --------------------------------------------------------------------------------------------


def hidden_norms(model, x):
    with torch.no_grad():
        _, hiddens = model(x, return_hidden=True)
    naive = [h.norm(-1) for h in hiddens]  # expect: FA001
    whole = [h.detach().norm(2) for h in hiddens]  # expect: FA001
    per_sample = [h.norm(dim=-1) for h in hiddens]
    explicit = [h.norm(p=2, dim=1) for h in hiddens]
    ordered = [torch.linalg.vector_norm(h, 2, -1) for h in hiddens]
    positional_dim = [h.norm(2, 1) for h in hiddens]
    last = torch.norm(hiddens[-1], -1)  # expect: FA001
    first = torch.linalg.norm(hiddens[0], -1)  # expect: FA001
    peak = vector_norm(hiddens[0], math.inf)  # expect: FA001
    peak_per_sample = vector_norm(hiddens[0], math.inf, dim=1)
    total = hiddens[-1].norm(p=2)  # the whole tensor on purpose: a keyword says so
    frobenius = hiddens[-1].norm("fro")
    normalised = model.norm(hiddens[-1])
    growth = (
        hiddens[-1]
        .norm(-1)  # expect: FA001
        / hiddens[0].norm(dim=-1).mean()
    )
    return naive, whole, per_sample, explicit, ordered, positional_dim, last, first, peak, \
        peak_per_sample, total, frobenius, normalised, growth


# --------------------------------------------------------------------------------------------
# cosines on gradients (pitfall 2)
# --------------------------------------------------------------------------------------------


def reference_gradients(model, x, y):
    logits, hiddens = model(x, return_hidden=True)
    return torch.autograd.grad(F.cross_entropy(logits, y), hiddens)


def dfa_credit(logits, y, feedback):
    e = F.softmax(logits, dim=1) - F.one_hot(y, NUM_CLASSES).to(logits)
    return [e @ B for B in feedback]


def layer_alignment(model, feedback, x, y):
    logits, hiddens = model(x, return_hidden=True)
    grads = torch.autograd.grad(F.cross_entropy(logits, y), hiddens, retain_graph=True)
    credits = dfa_credit(logits, y, feedback)
    gammas = []
    for a, g in zip(credits, grads):
        gammas.append(F.cosine_similarity(a, g, dim=1).mean())  # expect: FA002
    g_last = grads[-1].flatten(1)
    clamped = torch.nn.functional.cosine_similarity(credits[-1], g_last)  # expect: FA002
    with_eps = F.cosine_similarity(credits[-1], g_last, dim=1, eps=1e-300)
    positional_eps = F.cosine_similarity(credits[-1], g_last, 1, 1e-300)
    honest = cosine_per_sample(credits[-1], g_last)
    drift = F.cosine_similarity(hiddens[0], hiddens[1], dim=1)
    credit_vs_credit = F.cosine_similarity(credits[0], credits[1])
    per_layer = [torch.cosine_similarity(a, g, dim=1) for a, g in zip(credits, grads)]  # expect: FA002
    module_form = nn.CosineSimilarity(dim=1)(credits[0], grads[0])  # expect: FA002
    return gammas, clamped, with_eps, positional_eps, honest, drift, credit_vs_credit, per_layer, module_form


def weight_alignment(model, feedback):
    cos = nn.CosineSimilarity(dim=0)
    exact = nn.CosineSimilarity(dim=0, eps=0.0)
    out = []
    for p, B in zip(model.blocks.parameters(), feedback):
        out.append(cos(p.flatten(), B.flatten()))
        out.append(cos(p.grad.flatten(), B.flatten()))  # expect: FA002
        out.append(exact(p.grad.flatten(), B.flatten()))
    return out


def detached_alignment(model, credit, x, y):
    x = x.clone().requires_grad_()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    g_input = x.grad
    return F.cosine_similarity(credit, g_input, dim=1)  # expect: FA002


def no_gradient_here(a, g):
    # `g` is a parameter here, not a gradient this function computed
    return F.cosine_similarity(a, g, dim=1)


# --------------------------------------------------------------------------------------------
# half precision (pitfall 3)
# --------------------------------------------------------------------------------------------


def mixed_precision_reference(model, x, y):
    with torch.autocast("cuda", dtype=torch.float16):  # expect: FA003
        logits, hiddens = model(x, return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), hiddens)
    return grads


def amp_backward(model, x, y):
    with autocast():  # expect: FA003
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    return [p.grad for p in model.parameters()]


def cuda_default_autocast(model, x, y):
    with torch.autocast(device_type="cuda"):  # expect: FA003
        loss = F.cross_entropy(model(x), y)
        loss.backward()


def bf16_reference(model, x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, hiddens = model(x, return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), hiddens)
    return grads


def fp16_forward_fp32_backward(model, x, y):
    with torch.autocast("cuda", dtype=torch.float16):
        logits = model(x)
        with torch.autocast("cuda", enabled=False):
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
    return logits


def store_gradients(model, x, y):
    F.cross_entropy(model(x), y).backward()
    stored = [p.grad.half() for p in model.parameters()]  # expect: FA003
    g0 = next(model.parameters()).grad
    small = g0.to(torch.float16)  # expect: FA003
    also_small = g0.to(device="cpu", dtype=torch.half)  # expect: FA003
    legacy = g0.type(torch.HalfTensor)  # expect: FA003
    kept = g0.to(torch.bfloat16)
    weights = model.half()
    activations = x.half()
    return stored, small, also_small, legacy, kept, weights, activations


# --------------------------------------------------------------------------------------------
# batch mismatch (pitfall B3)
# --------------------------------------------------------------------------------------------


def evaluate_two_batches(model, feedback, loader):
    it = iter(loader)
    x_ref, y_ref = next(it)
    x_dfa, y_dfa = next(it)
    g = reference_gradients(model, x_ref, y_ref)[-1]
    logits = model(x_dfa)
    credit = dfa_credit(logits, y_dfa, feedback)[-1]
    return cosine_per_sample(credit, g)  # expect: FA004


def evaluate_indexed(model, feedback, eval_batches):
    x0, y0 = eval_batches[0]
    x1, y1 = eval_batches[1]
    g0 = reference_gradients(model, x0, y0)[-1]
    credit1 = dfa_credit(model(x1), y1, feedback)[-1]
    credit0 = dfa_credit(model(x0), y0, feedback)[-1]
    mismatched = F.cosine_similarity(credit1, g0, dim=1, eps=1e-300)  # expect: FA004
    matched = F.cosine_similarity(credit0, g0, dim=1, eps=1e-300)
    return mismatched, matched


def evaluate_against_a_fixed_reference(model, feedback, loader):
    x_fixed, y_fixed = next(iter(loader))
    g_fixed = reference_gradients(model, x_fixed, y_fixed)[-1]
    gammas = []
    for x, y in loader:
        credit = dfa_credit(model(x), y, feedback)[-1]
        gammas.append(cosine_per_sample(credit, g_fixed))  # expect: FA004
        gammas.append(F.cosine_similarity(credit, g_fixed))  # expect: FA002, FA004
        g = reference_gradients(model, x, y)[-1]
        gammas.append(cosine_per_sample(credit, g))
    return gammas


def evaluate_one_batch(model, feedback, loader):
    batch = next(iter(loader))
    x, y = batch[0], batch[1]
    g = reference_gradients(model, x, y)[-1]
    credit = dfa_credit(model(x), y, feedback)[-1]
    return cosine_per_sample(credit, g)


def evaluate_either(model, feedback, eval_batches, first):
    if first:
        x, y = eval_batches[0]
    else:
        x, y = eval_batches[1]
    g = reference_gradients(model, x, y)[-1]
    x0, y0 = eval_batches[0]
    credit = dfa_credit(model(x0), y0, feedback)[-1]
    return cosine_per_sample(credit, g)


def evaluate_each_batch(model, feedback, eval_batches):
    device = next(model.parameters()).device
    rows = []
    for x, y in eval_batches:
        x, y = x.to(device), y.to(device)
        logits, hiddens = model(x, return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), hiddens)
        credits = dfa_credit(logits, y, feedback)
        rows.append([cosine_per_sample(a, g) for a, g in zip(credits, grads)])
    return rows


# --------------------------------------------------------------------------------------------
# reproducers kept on purpose
# --------------------------------------------------------------------------------------------


def naive_norm_for_comparison(h):
    return h.norm(-1)  # noqa


def naive_cosine_for_comparison(a, g_grad):
    return F.cosine_similarity(a, g_grad)  # noqa: FA002


def wrong_code_suppressed(h):
    return h.norm(-1)  # expect: FA001  # noqa: FA002


if __name__ == "__main__":
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(512, 40), torch.randint(0, NUM_CLASSES, (512,)))
    train_loader = DataLoader(data, batch_size=128, shuffle=True)
    net = ProbedMLP(40, 64, 4)
    B_l = [torch.randn(NUM_CLASSES, 64) for _ in range(5)]
    xa, ya = next(iter(train_loader))
    xb, yb = next(iter(train_loader))
    reference = reference_gradients(net, xa, ya)[-1]
    candidate = dfa_credit(net(xb), yb, B_l)[-1]
    print(cosine_per_sample(candidate, reference).mean())  # expect: FA004
    print(hidden_norms(net, xa))
