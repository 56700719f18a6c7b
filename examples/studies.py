"""The reference study's validation exercises as functions: train (or reuse) bundles, run the
protocol, aggregate over seeds and render the tables. ``examples/`` wraps each in a command.

Every study writes its bundles under ``out`` and reuses a bundle whose recorded training
matches, so the tables can be rebuilt without retraining and the studies share runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pytest_fa.core import registry
from pytest_fa.core.calibration import null_gamma
from pytest_fa.core.perturbation import perturbation_correlation
from pytest_fa.core.reference import reference_pass
from pytest_fa.core.settings import resolve_device
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.protocol import ProtocolRunner, ProtocolSettings
from pytest_fa.training.checkpoint import load_bundle, load_checkpoint, save_bundle
from pytest_fa.training.data import Dataset, eval_batches, load_dataset
from pytest_fa.training.methods import get_method
from pytest_fa.training.monitor import temporal_replay
from pytest_fa.training.trainer import DEFAULT_EPOCHS, Recipe, train

Log = Callable[[str], None]
AUDIT_METHODS = ("bp", "ep", "dfa", "state_bridge", "credit_bridge")
SEEDS = (42, 123, 456)


# -- runs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One training run: method (with config), seed, architecture, budget."""

    method: str
    seed: int
    method_config: tuple[tuple[str, Any], ...] = ()
    arch: str = "resmlp"
    arch_config: tuple[tuple[str, Any], ...] = (("d", 256), ("depth", 4))
    epochs: int = DEFAULT_EPOCHS
    recipe: Recipe = Recipe()

    @property
    def label(self) -> str:
        extra = "".join(f"_{k}{v:g}" if isinstance(v, float) else f"_{k}{v}" for k, v in self.method_config)
        return f"{self.arch}_{self.method}{extra}_s{self.seed}"


def run(data: Dataset, spec: RunSpec, out: Path, device: str = "auto", log: Log | None = None) -> Path:
    """Train ``spec`` on ``data`` unless ``out`` already holds a bundle of exactly this run."""
    path = Path(out) / f"{spec.label}.pt"
    if path.exists():
        bundle = load_bundle(path)
        if (
            bundle.data == data.spec
            and bundle.epochs == spec.epochs
            and bundle.recipe == asdict(spec.recipe)
            and {k: v for k, v in bundle.arch_config.items() if k in dict(spec.arch_config)} == dict(spec.arch_config)
        ):
            return path
    if log:
        log(f"training {spec.label} on {data.name} …")
    tick = time.perf_counter()
    result = train(
        data,
        get_method(spec.method, **dict(spec.method_config)),
        arch=spec.arch,
        arch_config=dict(spec.arch_config),
        epochs=spec.epochs,
        seed=spec.seed,
        recipe=spec.recipe,
        device=device,
    )
    result.bundle.metrics["train_seconds"] = time.perf_counter() - tick
    return save_bundle(path, result.bundle)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt_ms(values: Sequence[float], spec: str = ".3f") -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{mean:{spec}} ± {std:{spec.lstrip('+')}}" if len(values) > 1 else f"{mean:{spec}}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- the field's headline Γ --------------------------------------------------------------------
def field_gamma(model, batches, credit) -> float:
    """Headline Γ the way papers compute it: ``F.cosine_similarity`` (eps 1e-8) per sample,
    averaged over samples and then over layers. Kept only to show what status-quo
    reporting sees; pytest-fa's own Γ is per layer, float64, without a clamp."""
    per_layer: list[list[torch.Tensor]] = []
    model.eval()
    for x, y in batches:
        ref = reference_pass(model, x, y, credit)
        for index, (a, g) in enumerate(zip(ref.credits, ref.rows)):
            if len(per_layer) <= index:
                per_layer.append([])
            field = F.cosine_similarity(a.detach().float(), g.float(), dim=1, eps=1e-8)
            per_layer[index].append(field)
    return statistics.fmean(float(torch.cat(c).mean()) for c in per_layer)


# -- the audit ---------------------------------------------------------------------------------
@dataclass
class SeedResult:
    method: str
    seed: int
    path: str
    report: dict[str, Any]
    field_gamma: float | None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def acc(self) -> float:
        return self.report["accuracy"]["headline"]

    def value(self, key: str) -> float | None:
        return self.report["diagnostics"][key]["value"]

    def fired(self, key: str) -> bool:
        return bool(self.report["diagnostics"][key]["fires"])

    def deep_gamma(self) -> float | None:
        return self.report["gamma"]["mean_deep_layers"]


def diagnose_runs(paths: Sequence[Path], settings: ProtocolSettings, cache_dir: Path, log: Log | None = None) -> list[SeedResult]:
    """The protocol on each bundle, plus the field's headline Γ for the status-quo reading."""
    runner = ProtocolRunner(settings)
    results = []
    for path in paths:
        if log:
            log(f"protocol on {path.name} …")
        report = runner.report(str(path), cache_dir=cache_dir)
        checkpoint = runner.run(str(path))
        method = get_method(checkpoint.method, **checkpoint.loaded.state.config)
        credit, _ = method.credit(checkpoint.pristine, checkpoint.loaded.state)
        gamma = field_gamma(checkpoint.pristine, runner.eval_batches(str(path)), credit) if credit else None
        results.append(SeedResult(
            checkpoint.method, checkpoint.bundle.seed, str(path), report.to_dict(), gamma,
            checkpoint.bundle.metrics.get("history", []),
        ))
    return results


def status_quo_walks_back(result: SeedResult, num_classes: int) -> bool:
    """S1, the field's reading: walked back only if accuracy is at chance or Γ is not positive."""
    return result.acc <= 1.0 / num_classes + 0.02 or (result.field_gamma is not None and result.field_gamma <= 0)


def audit(
    data: Dataset,
    out: Path,
    *,
    methods: Sequence[str] = AUDIT_METHODS,
    seeds: Sequence[int] = SEEDS,
    epochs: int = DEFAULT_EPOCHS,
    arch_config: dict[str, Any] | None = None,
    device: str = "auto",
    batch_size: int = 128,
    log: Log | None = None,
) -> list[SeedResult]:
    """Train every method × seed (or reuse the bundles) and run the protocol on each."""
    arch = tuple((arch_config or {"d": 256, "depth": 4}).items())
    paths = [
        run(data, RunSpec(m, s, arch_config=arch, epochs=epochs), out, device, log)
        for m in methods for s in seeds
    ]
    settings = ProtocolSettings(device=device, batch_size=batch_size, data_root=data.spec["root"])
    return diagnose_runs(paths, settings, Path(out) / "frozen", log)


def audit_table(results: Sequence[SeedResult], num_classes: int) -> str:
    """Table 1 of the paper: mean ± std over seeds, status-quo vs protocol verdicts."""
    rows = []
    for method in dict.fromkeys(r.method for r in results):
        rs = [r for r in results if r.method == method]
        walked = sum(not r.report["trustworthy"] for r in rs)
        status = sum(status_quo_walks_back(r, num_classes) for r in rs)
        rows.append((
            method,
            fmt_ms([r.acc for r in rs]),
            fmt_ms([r.report["accuracy"]["frozen_baseline"] for r in rs]),
            fmt_ms([r.field_gamma for r in rs]),
            fmt_ms([r.deep_gamma() for r in rs]) if any(r.deep_gamma() is not None for r in rs) else "undefined",
            _sci_ms([r.value("a") for r in rs]) + "×",
            _sci_ms([r.report["layers"][-1]["h_norm"] for r in rs]),
            _sci_ms([r.value("b") for r in rs]),
            fmt_ms([r.value("c") for r in rs], "+.2f"),
            fmt_ms([r.value("d") for r in rs], "+.1f") + " pp",
            f"walked back {status}/{len(rs)}" if status else "trustworthy",
            f"walked back {walked}/{len(rs)} ({_fired_summary(rs)})" if walked else "trustworthy",
        ))
    header = ("method", "test acc", "frozen", "headline Γ (field)", "deep Γ (pytest-fa)", "(a) growth", "‖h_L‖",
              "(b) ‖g_L‖@128", "(c) stab.", "(d) margin", "status-quo verdict", "protocol verdict")
    return markdown_table(header, rows)


def _sci_ms(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2g}" if len(values) < 2 else f"{mean:.2g} ± {std:.1g}"


def _fired_summary(results: Sequence[SeedResult]) -> str:
    keys = sorted({k for r in results for k in r.report["fired"]})
    return ", ".join(f"({k})" for k in keys)


# -- decision utility ----------------------------------------------------------------------------
STRATEGIES: dict[str, tuple[str, Callable[[SeedResult, int], bool]]] = {
    "S0": ("accuracy only", lambda r, c: r.acc <= 1.0 / c + 0.02),
    "S1": ("accuracy + headline Γ (field-standard)", status_quo_walks_back),
    "S2": ("(a) residual growth alone", lambda r, c: r.fired("a")),
    "S3": ("(b) gradient floor alone", lambda r, c: r.fired("b")),
    "S4": ("(c) direction stability alone", lambda r, c: r.fired("c")),
    "S5": ("(d) frozen-blocks margin alone", lambda r, c: r.fired("d")),
    "S_full": ("protocol: (a) or (b) or (d)", lambda r, c: not r.report["trustworthy"]),
}


def decision_utility_table(results: Sequence[SeedResult], num_classes: int) -> str:
    """How many methods each strategy walks back (a method counts when every seed is walked back)."""
    methods = list(dict.fromkeys(r.method for r in results))
    rows = []
    for key, (name, rule) in STRATEGIES.items():
        walked = [m for m in methods if all(rule(r, num_classes) for r in results if r.method == m)]
        rows.append((key, name, f"{len(walked)}/{len(methods)}", ", ".join(walked) or "—"))
    return markdown_table(("strategy", "evidence used", "walked back", "which"), rows)


# -- threshold sensitivity -------------------------------------------------------------------------
def separation(results: Sequence[SeedResult]) -> dict[str, dict[str, Any]]:
    """For (a) and (b): the healthy extreme, the degenerate extreme and the gap between them.

    Healthy runs are those the protocol passes, degenerate those walked back with (a) or (b).
    """
    healthy = [r for r in results if r.report["trustworthy"]]
    degenerate = [r for r in results if r.fired("a") or r.fired("b")]
    out: dict[str, dict[str, Any]] = {}
    if healthy and degenerate:
        h_max = max(healthy, key=lambda r: r.value("a"))
        d_min = min((r for r in degenerate if r.fired("a")), key=lambda r: r.value("a"), default=None)
        if d_min is not None:
            out["a"] = {"healthy": (h_max.value("a"), f"{h_max.method} s{h_max.seed}"),
                        "degenerate": (d_min.value("a"), f"{d_min.method} s{d_min.seed}"),
                        "gap": d_min.value("a") / h_max.value("a")}
        h_min = min(healthy, key=lambda r: r.value("b"))
        floored = [r for r in degenerate if r.fired("b")]
        if floored:
            d_max = max(floored, key=lambda r: r.value("b"))
            out["b"] = {"healthy": (h_min.value("b"), f"{h_min.method} s{h_min.seed}"),
                        "degenerate": (d_max.value("b"), f"{d_max.method} s{d_max.seed}"),
                        "gap": h_min.value("b") / d_max.value("b")}
    return out


def sensitivity_table(results: Sequence[SeedResult], factors: Sequence[float] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)) -> str:
    """Verdict flips when each threshold is scaled, relative to the default verdicts."""
    base = DiagnosticThresholds()
    rows = []
    for diagnostic in registry.DIAGNOSTICS:
        if not diagnostic.walk_back:
            continue
        for factor in factors:
            threshold = diagnostic.threshold_value(base) * factor
            fired = [_fires(r, diagnostic, threshold) for r in results]
            flips = [f"{r.method} s{r.seed}" for r, f in zip(results, fired) if f != r.fired(diagnostic.key)]
            rows.append((f"({diagnostic.key}) {diagnostic.threshold}", f"×{factor:g} = {threshold:.3g}",
                         f"{sum(fired)}/{len(results)}", ", ".join(flips) or "none"))
    return markdown_table(("diagnostic", "threshold", "runs firing", "verdicts that flip"), rows)


def _fires(result: SeedResult, diagnostic: registry.Diagnostic, threshold: float) -> bool:
    value = result.value(diagnostic.key)
    return value is not None and diagnostic.crosses(value, threshold)


def separation_table(results: Sequence[SeedResult]) -> str:
    gaps = separation(results)
    rows = [
        (f"({k})", f"{v['healthy'][0]:.3g} ({v['healthy'][1]})", f"{v['degenerate'][0]:.3g} ({v['degenerate'][1]})", f"{v['gap']:.3g}×")
        for k, v in gaps.items()
    ]
    return markdown_table(("diagnostic", "healthy extreme", "degenerate extreme", "separation gap"), rows) if rows else "(no healthy/degenerate pair to separate)"


# -- temporal replay -------------------------------------------------------------------------------
def temporal_table(results: Sequence[SeedResult]) -> str:
    """First epoch each of (a) and (b) fires, accuracy then and at the end, compute saved."""
    rows = []
    for r in results:
        if not r.history or "max_growth" not in r.history[0]:
            continue
        first = temporal_replay(r.history)
        fire = min((e for e in first.values() if e is not None), default=None)
        acc_then = r.history[fire - 1]["test_acc"] if fire else None
        saved = 1 - fire / len(r.history) if fire else None
        rows.append((
            r.method, str(r.seed), str(first["a"] or "never"), str(first["b"] or "never"),
            f"{acc_then:.4f}" if acc_then is not None else "—", f"{r.history[-1]['test_acc']:.4f}",
            f"{100 * saved:.0f}%" if saved is not None else "—",
        ))
    return markdown_table(("method", "seed", "(a) first fires (epoch)", "(b) first fires (epoch)", "acc at first firing", "final acc", "compute saved"), rows)


# -- penalty sweep and null calibration ----------------------------------------------------------------
def penalty_sweep(
    data: Dataset, out: Path, lambdas: Sequence[float], *, seed: int = 42, epochs: int = DEFAULT_EPOCHS,
    arch_config: dict[str, Any] | None = None, device: str = "auto", batch_size: int = 128,
    control_penalty: float = 1e-2, log: Log | None = None,
) -> list[dict[str, Any]]:
    """DFA with ``λ Σ‖f_l‖²`` for each λ, and BP without and with ``control_penalty`` (the
    paper's λ = 1e-2) as the capacity-cost control."""
    arch = tuple((arch_config or {"d": 256, "depth": 4}).items())
    # λ = 0 is plain DFA: the same run (and bundle) as the audit's
    specs = [RunSpec("dfa", seed, (("penalty", float(lam)),) if lam else (), arch_config=arch, epochs=epochs) for lam in lambdas]
    specs += [RunSpec("bp", seed, arch_config=arch, epochs=epochs),
              RunSpec("bp", seed, (("penalty", float(control_penalty)),), arch_config=arch, epochs=epochs)]
    paths = [run(data, spec, out, device, log) for spec in specs]
    settings = ProtocolSettings(device=device, batch_size=batch_size, data_root=data.spec["root"])
    results = diagnose_runs(paths, settings, Path(out) / "frozen", log)
    rows = []
    runner_batches = eval_batches(data, 8, batch_size)
    for spec, path, result in zip(specs, paths, results):
        loaded = load_checkpoint(path)
        method = get_method(loaded.method, **loaded.state.config)
        credit, _ = method.credit(loaded.model, loaded.state)
        rho = perturbation_correlation(loaded.model, runner_batches[:2], credit, aux_modules=list(loaded.state.aux.values()))
        rows.append({"method": spec.method, "penalty": dict(spec.method_config).get("penalty", 0.0),
                     "result": result, "rho_deep": rho.deep_mean(), "path": str(path)})
    return rows


def penalty_table(rows: Sequence[dict[str, Any]]) -> str:
    out = []
    for row in rows:
        r: SeedResult = row["result"]
        out.append((
            row["method"], f"{row['penalty']:g}", f"{r.acc:.4f}", f"{r.report['layers'][-1]['h_norm']:.3g}",
            f"{r.value('b'):.3g}", _fmt(r.deep_gamma(), "+.3f"), f"{row['rho_deep']:+.3f}",
            f"{r.value('d'):+.1f} pp", r.report["verdict"],
        ))
    return markdown_table(("method", "λ", "test acc", "‖h_L‖", "(b) ‖g_L‖@128", "deep Γ", "deep ρ", "(d) margin", "verdict"), out)


def _fmt(value: float | None, spec: str) -> str:
    return "undefined" if value is None else format(value, spec)


def null_calibration(path: Path, data: Dataset, *, n: int = 20, batch_size: int = 128) -> dict[str, Any]:
    """Γ with the training feedback vs ``n`` fresh draws, per layer, for one DFA bundle."""
    loaded = load_checkpoint(path)
    batches = eval_batches(data, 8, batch_size)
    calib = null_gamma(loaded.model, batches, data.num_classes, feedback=loaded.state.feedback, n=n)
    return {"path": str(path), "trained": calib.trained, "null_mean": calib.null_mean, "null_std": calib.null_std,
            "z": calib.z_scores(), "deep_null": calib.deep_null()}


def null_table(calib: dict[str, Any]) -> str:
    rows = [
        (f"h_{i}", f"{t:+.3f}", f"{m:+.3f} ± {s:.3f}", f"{z:+.1f}")
        for i, (t, m, s, z) in enumerate(zip(calib["trained"], calib["null_mean"], calib["null_std"], calib["z"]))
    ]
    return markdown_table(("layer", "Γ (training B)", "Γ (fresh B, n draws)", "z"), rows)


# -- cross-architecture -------------------------------------------------------------------------------
ARCH_SETTINGS = {
    "resmlp": {"d": 256, "depth": 4},
    "vit-mini": {"d": 128, "depth": 4, "patch": 4},
    "smallcnn": {"channels": 32, "depth": 3},
    "studentnet": {"d": 128, "depth": 4},
}


def cross_architecture(
    datasets: dict[str, Dataset], out: Path, *, seeds: Sequence[int] = (42,), epochs: int = DEFAULT_EPOCHS,
    device: str = "auto", batch_size: int = 128, archs: dict[str, dict[str, Any]] | None = None, log: Log | None = None,
) -> list[SeedResult]:
    """BP and DFA on each architecture (StudentNet on its synthetic teacher-student task)."""
    results = []
    for arch, config in (archs or ARCH_SETTINGS).items():
        data = datasets["synthetic" if arch == "studentnet" else "default"]
        paths = [run(data, RunSpec(m, s, arch=arch, arch_config=tuple(config.items()), epochs=epochs), out, device, log)
                 for m in ("bp", "dfa") for s in seeds]
        settings = ProtocolSettings(device=device, batch_size=batch_size, data_root=data.spec["root"])
        for r in diagnose_runs(paths, settings, Path(out) / "frozen", log):
            r.report["context"]["arch_name"] = arch
            results.append(r)
    return results


def cross_architecture_table(results: Sequence[SeedResult]) -> str:
    rows = []
    for arch in dict.fromkeys(r.report["context"]["arch_name"] for r in results):
        bp = [r for r in results if r.report["context"]["arch_name"] == arch and r.method == "bp"]
        dfa = [r for r in results if r.report["context"]["arch_name"] == arch and r.method == "dfa"]
        replay = [temporal_replay(r.history) for r in dfa if r.history]
        rows.append((
            arch, "yes" if bp[0].report["context"]["terminal_norm"] else "no",
            "never" if not any(not r.report["trustworthy"] for r in bp) else "fires: " + _fired_summary(bp),
            _count(dfa, "a") + _epochs(replay, "a"), _count(dfa, "b") + _epochs(replay, "b"),
            fmt_ms([r.acc for r in bp]) + " / " + fmt_ms([r.acc for r in dfa]),
            fmt_ms([r.report["accuracy"]["frozen_baseline"] for r in dfa]),
        ))
    return markdown_table(("arch", "terminal LN", "BP fires?", "DFA (a) fires?", "DFA (b) fires?", "acc BP / DFA", "frozen"), rows)


def _count(results: Sequence[SeedResult], key: str) -> str:
    fired = sum(r.fired(key) for r in results)
    return f"{'yes' if fired == len(results) else 'no' if not fired else 'partly'} ({fired}/{len(results)})"


def _epochs(replays: Sequence[dict[str, int | None]], key: str) -> str:
    epochs = [r[key] for r in replays if r[key] is not None]
    return f", ep {min(epochs)}–{max(epochs)}" if epochs else ""


# -- command lines ------------------------------------------------------------------------------------
SMOKE = {"num_samples": 3000, "arch": {"d": 32, "depth": 4}, "epochs": 2, "seeds": (42, 123), "batch_size": 32}


@dataclass
class StudySetup:
    data: Dataset
    out: Path
    epochs: int
    seeds: tuple[int, ...]
    arch_config: dict[str, Any]
    device: str
    batch_size: int
    smoke: bool
    log: Log

    def write(self, name: str, title: str, table: str, command: str, payload: Any = None) -> Path:
        """``<out>/<name>.md`` (the table, the command and the machine) and ``<name>.json``."""
        import platform

        self.out.mkdir(parents=True, exist_ok=True)
        machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, device {resolve_device(self.device).type}"
        text = f"## {title}\n\nData: {self.data.name} ({len(self.data.x_train)} train / {len(self.data.x_test)} test)\n" \
               f"Command: `{command}`\nMachine: {machine}\n\n{table}\n"
        path = self.out / f"{name}.md"
        path.write_text(text)
        if payload is not None:
            (self.out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
        self.log(text)
        return path


def study_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default="mnist1d", help="mnist1d (default), fashion-mnist, cifar10, cifar100")
    parser.add_argument("--data-root", default=None, help="folder with the data files (CIFAR, Fashion-MNIST)")
    parser.add_argument("--out", default=None, help="folder for bundles and tables (default runs/studies/<data>)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the pipeline in seconds")
    return parser


def setup(args: argparse.Namespace) -> StudySetup:
    log = lambda line: print(line, flush=True)  # noqa: E731
    data_config = {"num_samples": SMOKE["num_samples"]} if args.smoke and args.data == "mnist1d" else {}
    if args.smoke and args.data in ("fashion-mnist", "cifar10", "cifar100"):
        data_config = {"limit_train": 3000, "limit_test": 600}
    out = Path(args.out or f"runs/studies/{args.data}{'-smoke' if args.smoke else ''}")
    return StudySetup(
        data=load_dataset(args.data, root=args.data_root, **data_config),
        out=out,
        epochs=SMOKE["epochs"] if args.smoke else args.epochs,
        seeds=tuple(SMOKE["seeds"] if args.smoke else args.seeds),
        arch_config=dict(SMOKE["arch"]) if args.smoke else {"d": 256, "depth": 4},
        device=args.device,
        batch_size=SMOKE["batch_size"] if args.smoke else 128,
        smoke=args.smoke,
        log=log,
    )


def run_audit(study: StudySetup) -> list[SeedResult]:
    return audit(study.data, study.out, seeds=study.seeds, epochs=study.epochs, arch_config=study.arch_config,
                 device=study.device, batch_size=study.batch_size, log=study.log)
