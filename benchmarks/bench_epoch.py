"""One training epoch of pytest_fa.training.trainer.train ÷ a minimal hand-written torch loop.

    python benchmarks/bench_epoch.py --mode base --method bp  --threads 1 --repeats 5
    python benchmarks/bench_epoch.py --mode base --method dfa --threads 1 --repeats 5
    python benchmarks/bench_epoch.py --mode compile --method bp --threads 1 --repeats 3
    python benchmarks/bench_epoch.py --mode vmap --threads 1 --repeats 3
    python benchmarks/bench_epoch.py --mode step --method dfa --threads 1 --repeats 15

ResMLP d=256 L=4 on MNIST-1D (48 000 train samples), batch 128, AdamW lr 1e-3 wd 0.01 with the
package's cosine schedule over the epoch's 375 steps, the same seeded permutation.

--mode base     hand      the minimal loop, training steps only
                hand+acc  the same plus one test-accuracy pass over the 12 000 test samples
                          (train() measures that every epoch)
                pkg_mon   train(data, method, epochs=1, monitor=True)
                pkg_nomon train(..., monitor=False)
--mode compile  hand / hand_compiled: BP compiles the model (Module.compile), DFA compiles the
                whole local forward pass as one function; pkg_nomon / pkg_compiled: train()
                with a model_factory returning the model compiled in place (BP: the model; DFA:
                embed, each block, out_ln, out_head, because the package calls them one by one).
                Compilation happens before the timed rounds and is reported separately
--mode vmap     seq3  three hand BP epochs, seeds 42, 123, 456, one after another
                vmap3 the three models stacked (torch.func.stack_module_state), one
                functional_call under vmap per step, one AdamW over the stacked parameters
--mode step     where a package step's extra time goes, per 100 steps on one batch (no optimiser):
                pkg_step  Method.loss(...) + loss.backward()   hand_step the hand loop's forward/backward
                pkg_fwd / hand_fwd  the same forward passes alone, under no_grad
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from _common import fmt_ms, fmt_ratio, interleaved, provenance, ratio_stats

SEEDS = (42, 123, 456)


def build(seed: int, data):
    from pytest_fa.models import build_model

    torch.manual_seed(seed)
    return build_model("resmlp", input_shape=list(data.input_shape), num_classes=data.num_classes, d=256, depth=4)


def optimiser(params, steps: int):
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


@torch.no_grad()
def test_accuracy(model, data) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in zip(data.x_test.split(4096), data.y_test.split(4096)))
    model.train()
    return correct / len(data.y_test)


def hand_bp(data, seed: int = 42, model=None, batch: int = 128):
    """Plain BP: CE on each shuffled batch, loss.backward(), AdamW step, schedule step."""
    model = model if model is not None else build(seed, data)
    steps = math.ceil(len(data.x_train) / batch)
    opt, sched = optimiser(model.parameters(), steps)
    perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    model.train()
    for i in range(steps):
        idx = perm[i * batch : (i + 1) * batch]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model


def local_forward(model, x):
    """Every module's input detached: (logits, [h_0, f_0(h_0), ..., f_{L-1}(h_{L-1})])."""
    h = model.embed(x)
    outputs = [h]
    h = h.detach()
    for block in model.blocks:
        branch = block(h)
        outputs.append(branch)
        h = (h + branch).detach()
    return model.out_head(model.out_ln(h)), outputs


COMPILED_LOCAL_FORWARD = None


def hand_dfa(data, seed: int = 42, model=None, batch: int = 128, compiled: bool = False):
    """Minimal DFA, the update pytest_fa.training.methods.DFA computes: every module's input is
    detached, module l's output receives the gradient a_l / B with a_l = e B_l,
    e = softmax(z) - onehot(y); the terminal LN and head get their true CE gradient.
    ``compiled``: the local forward pass as one torch.compile'd function."""
    global COMPILED_LOCAL_FORWARD
    if compiled and COMPILED_LOCAL_FORWARD is None:
        COMPILED_LOCAL_FORWARD = torch.compile(local_forward)
    forward = COMPILED_LOCAL_FORWARD if compiled else local_forward
    model = model if model is not None else build(seed, data)
    classes, d = data.num_classes, model.embed.out_features
    gen = torch.Generator().manual_seed(seed + 1)
    feedback = [torch.randn(classes, d, generator=gen) / math.sqrt(classes) for _ in range(len(model.blocks) + 1)]
    steps = math.ceil(len(data.x_train) / batch)
    opt, sched = optimiser(model.parameters(), steps)
    perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    model.train()
    for i in range(steps):
        idx = perm[i * batch : (i + 1) * batch]
        x, y = data.x_train[idx], data.y_train[idx]
        logits, outputs = forward(model, x)
        e = torch.softmax(logits.detach(), -1) - F.one_hot(y, classes).to(logits.dtype)
        grads = [e @ b / len(y) for b in feedback]
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward([F.cross_entropy(logits, y), *outputs], [None, *grads])
        opt.step()
        sched.step()
    return model


HAND = {"bp": hand_bp, "dfa": hand_dfa}


def package(data, method: str, monitor: bool, factory=None):
    from pytest_fa.training.trainer import train

    return train(data, method, epochs=1, seed=42, monitor=monitor, model_factory=factory, device="cpu").model


def compiled_model(seed: int, data, method: str):
    """The same model with its modules compiled in place (state_dict keys unchanged). DFA calls
    embed / blocks / out_ln / out_head one by one, so each is compiled; BP compiles the whole."""
    model = build(seed, data)
    if method == "bp":
        model.compile()
    else:
        for module in (model.embed, *model.blocks, model.out_ln, model.out_head):
            module.compile()
    return model


def vmap3(data, batch: int = 128):
    """Three seeds in one process: stacked parameters, vmap(functional_call) per step."""
    from torch.func import functional_call, stack_module_state

    models = [build(seed, data) for seed in SEEDS]
    params, buffers = stack_module_state(models)
    base = build(SEEDS[0], data).to("meta")
    steps = math.ceil(len(data.x_train) / batch)
    opt, sched = optimiser(params.values(), steps)
    perms = torch.stack([torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(s)) for s in SEEDS])

    def loss_one(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    batched = torch.vmap(loss_one)
    for i in range(steps):
        idx = perms[:, i * batch : (i + 1) * batch]  # (3, B): each seed its own shuffle
        losses = batched(params, buffers, data.x_train[idx], data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # parameters are disjoint: each model gets its own CE gradient
        opt.step()
        sched.step()
    return params


def step_contenders(data, method: str, steps: int = 100):
    """Forward+backward of one batch, repeated: the package's Method.loss vs the hand code."""
    from pytest_fa.training.methods import get_method

    model = build(42, data)
    m = get_method(method)
    state = m.setup(model, data.num_classes, data.input_shape, torch.Generator().manual_seed(43))
    x, y = data.x_train[:128], data.y_train[:128]

    def hand_loss(grad: bool):
        if method == "bp":
            logits = model(x)
            return [F.cross_entropy(logits, y)], [None]
        logits, outputs = local_forward(model, x)
        e = torch.softmax(logits.detach(), -1) - F.one_hot(y, data.num_classes).to(logits.dtype)
        return [F.cross_entropy(logits, y), *outputs], [None, *(e @ b / len(y) for b in state.feedback)]

    def repeat(fn):
        return lambda: [fn() for _ in range(steps)]

    def pkg_step():
        loss, _ = m.loss(model, state, x, y)
        model.zero_grad(set_to_none=True)
        loss.backward()

    def hand_step():
        tensors, grads = hand_loss(True)
        model.zero_grad(set_to_none=True)
        torch.autograd.backward(tensors, grads)

    @torch.no_grad()
    def pkg_fwd():
        m.loss(model, state, x, y)

    @torch.no_grad()
    def hand_fwd():
        hand_loss(False)

    return {"hand_step": repeat(hand_step), "pkg_step": repeat(pkg_step), "hand_fwd": repeat(hand_fwd), "pkg_fwd": repeat(pkg_fwd)}


def report(times, baseline: str, note: str = "") -> None:
    print(f"{'contender':<14} {'median time (raw, not a result)':>32}   ratio to {baseline}")
    for name, values in times.items():
        ratio = "1 (baseline)" if name == baseline else fmt_ratio(ratio_stats(values, times[baseline]))
        print(f"{name:<14} {fmt_ms(values):>32}   {ratio}")
    if note:
        print(note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("base", "compile", "vmap", "step"), default="base")
    parser.add_argument("--method", choices=("bp", "dfa"), default="bp")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5; +1 warm-up)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from pytest_fa.training.data import load_dataset

    data = load_dataset("mnist1d")
    print(provenance())
    print(f"torch {torch.__version__}  threads {torch.get_num_threads()}  mode {args.mode}  method {args.method}  "
          f"train {tuple(data.x_train.shape)}  rounds {args.repeats} (+1 warm-up)")
    hand = HAND[args.method]

    if args.mode == "base":
        def hand_acc():
            test_accuracy(hand(data), data)

        contenders = {
            "hand": lambda: hand(data),
            "hand+acc": hand_acc,
            "pkg_mon": lambda: package(data, args.method, monitor=True),
            "pkg_nomon": lambda: package(data, args.method, monitor=False),
        }
        times = interleaved(contenders, args.repeats, warmup=1)
        report(times, "hand")
        for name in ("pkg_mon", "pkg_nomon"):  # equal work: both sides measure test accuracy once
            print(f"{name} ÷ hand+acc: {fmt_ratio(ratio_stats(times[name], times['hand+acc']))}")
        got = package(data, args.method, monitor=False).state_dict()
        want = hand(data).state_dict()
        diff = max(float((got[k] - want[k]).abs().max()) for k in want)
        print(f"max |Δweight| package vs hand after one epoch: {diff:.3g}"
              + (" (bit-identical)" if diff == 0 else ""))

    elif args.mode == "compile":
        first = {}
        def hand_compiled():
            if args.method == "bp":
                return hand(data, model=compiled_model(42, data, "bp"))
            return hand_dfa(data, compiled=True)

        for name, make in (("hand_compiled", hand_compiled),
                           ("pkg_compiled", lambda: package(data, args.method, False, lambda: compiled_model(42, data, args.method)))):
            start = time.perf_counter()
            try:
                make()
            except Exception as exc:  # report, don't hide, a compile failure
                print(f"{name}: torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                return
            first[name] = time.perf_counter() - start
        contenders = {
            "hand": lambda: hand(data),
            "hand_compiled": hand_compiled,
            "pkg_nomon": lambda: package(data, args.method, monitor=False),
            "pkg_compiled": lambda: package(data, args.method, False, lambda: compiled_model(42, data, args.method)),
        }
        times = interleaved(contenders, args.repeats, warmup=1)
        report(times, "hand")
        for name in ("hand_compiled", "pkg_compiled"):
            base = "hand" if name.startswith("hand") else "pkg_nomon"
            print(f"{name} ÷ {base}: {fmt_ratio(ratio_stats(times[name], times[base]))}")
        print("first call, compilation included (raw): "
              + ", ".join(f"{k} {v:.1f} s" for k, v in first.items()))

    elif args.mode == "step":
        times = interleaved(step_contenders(data, args.method), args.repeats, warmup=2)
        report(times, "hand_step")
        print(f"pkg_fwd ÷ hand_fwd: {fmt_ratio(ratio_stats(times['pkg_fwd'], times['hand_fwd']))}")

    else:
        contenders = {"seq3": lambda: [hand_bp(data, seed) for seed in SEEDS], "vmap3": lambda: vmap3(data)}
        times = interleaved(contenders, args.repeats, warmup=1)
        report(times, "seq3", "vmap3 < 1 means the stacked run is faster than three sequential runs")


if __name__ == "__main__":
    main()
