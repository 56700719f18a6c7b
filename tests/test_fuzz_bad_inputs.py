"""Fuzz of bad input (slow tier): bundle fields, option values and report paths.

Every drawn input must end in one of two ways: a clear error (an ``FAError``, or
``pytest.UsageError`` in the plugin's layer, whose message is not a traceback) or a report that
was measured, with a verdict only on what was measured. Never a raw exception, and no file
changed but the reports.

The library is driven in-process as the command line drives it: one small trained bundle per
session, ``frozen_acc`` given so that no baseline is trained per example, and a few examples
of families 2 and 3 run a whole pytest session through ``pytester``.

``KNOWN_HOLES`` names each hole the fuzz found that is not fixed yet, with the exact input and
outcome it tolerates. When a fix lands, remove its entry: the fuzz then holds the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# pytester restores sys.modules after every in-process run: import up front what an inner
# session would otherwise import (and assertion-rewrite) again (see tests/test_plugin.py).
import hypothesis.internal.observability  # noqa: F401
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import pytest_fa.assertions  # noqa: F401
import pytest_fa.plugin as plugin
import pytest_fa.protocol as protocol
import pytest_fa.training.trainer as trainer
from pytest_fa import __version__
from pytest_fa.core import registry
from pytest_fa.core.markdown import markdown_report
from pytest_fa.core.report import summary_table
from pytest_fa.core.seeds import seed_groups, seed_table
from pytest_fa.core.settings import ProtocolSettings, SessionSettings
from pytest_fa.errors import CreditSignalError, FAError, as_flags
from pytest_fa.plugin._options import OPTIONS, THRESHOLD_OPTIONS, session_settings
from pytest_fa.plugin._state import STATE_KEY
from pytest_fa.protocol import ProtocolRunner
from pytest_fa.training.checkpoint import read_checkpoint
from pytest_fa.training.data import MAX_SAMPLES

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

EXAMPLES = 360  # per family
PYTESTER_RUNS = 8  # whole pytest sessions per family (2 and 3)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # examples run in their own folders; nothing is written under the repository
    phases=[Phase.explicit, Phase.generate],  # no shrinking: it would rerun reports for minutes
    suppress_health_check=list(HealthCheck),
)
NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Hole:
    """A hole the fuzz found and tolerates until its fix lands: where, the input, the outcome."""

    where: str
    input: str
    outcome: str


KNOWN_HOLES: dict[str, Hole] = {}


def known(name: str) -> str:
    """The outcome of an example that ran into the known hole ``name``."""
    assert name in KNOWN_HOLES, f"{name} is not a known hole"
    return f"known hole: {name}"


def tolerate(counts: Counter, name: str) -> None:
    counts[known(name)] += 1


# -- shared checks ----------------------------------------------------------------------------


def assert_clear(message: str) -> None:
    """A clear error says something and is not a traceback."""
    assert message.strip(), "an error without a message"
    assert "Traceback" not in message, message


def nonfinite_verdicts(report) -> list[str]:
    """Diagnostics that give a verdict (fire or not) on a value that is not a finite number."""
    return [
        key for key, result in report.diagnostics.items()
        if result.fires is not None and (result.value is None or not math.isfinite(result.value))
    ]


def assert_measured(report, frozen_acc: float, others=()) -> None:
    """The report holds measurements only, its verdict rests on them, and everything the
    plugin does with a report (terminal text, JSON, Markdown, seed table) works on it."""
    assert 0.0 <= report.headline_acc <= 1.0
    assert report.frozen_acc == frozen_acc
    margin = report.diagnostics["d"]
    if margin.value is not None:
        assert margin.value == pytest.approx(100 * (report.headline_acc - frozen_acc))
    if report.trustworthy:
        assert report.verdict == "trustworthy"
        for key in registry.walk_back_keys():
            assert report.diagnostics[key].evaluated, key
    for key in report.fired:
        assert report.verdict.startswith("needs walk-back") and f"({key}" in report.verdict
    as_flags(str(report))
    json.dumps(report.to_dict(), ensure_ascii=False)
    reports = [*others, report]
    summary_table(reports)
    groups = seed_groups(reports)
    if groups:
        seed_table(groups)
    assert markdown_report(reports, __version__).startswith("# pytest-fa protocol report")


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots`` (not following links): a file's hash, a link's target, a
    FIFO, a folder."""
    found: dict[str, tuple] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    found[path] = ("link", os.readlink(path))
                elif stat.S_ISDIR(mode):
                    found[path] = ("folder",)
                elif stat.S_ISFIFO(mode):
                    found[path] = ("fifo",)
                else:
                    found[path] = ("file", hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return found


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def base_payload(dfa_bundle) -> dict[str, Any]:
    return read_checkpoint(dfa_bundle)


@pytest.fixture(scope="module")
def runner(fuzz_root) -> ProtocolRunner:
    """One runner for the module, as one session diagnoses many checkpoints: the data set is
    loaded once."""
    return ProtocolRunner(ProtocolSettings(device="cpu", frozen_acc=0.5, cache_dir=str(fuzz_root / "cache")))


@pytest.fixture(scope="module")
def base_report(runner, dfa_bundle):
    return runner.report(str(dfa_bundle))


# =============================================================================================
# 1. Bundle fields
# =============================================================================================


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()

# Sizes that are wrong but cheap: a model of a huge width fails to allocate at once; a
# moderately large one (10**4..10**9) would allocate gigabytes first, so none is drawn.
BAD_SIZES = [0, -1, 1, 2, 31, 33, 64, 10**15, 2**63, 10**30, True, None, 1.5, NAN, INF, "32", "", [32], []]
BAD_DEPTHS = [0, -1, 1, 3, 5, 64, True, None, 1.5, NAN, "4", [4]]  # a huge depth builds its blocks one by one
BAD_SHAPES = [[40, 1], [41], [0], [-1], [], [[40]], [10**15], "ab", 40, None, (40,), [40.0], [NAN]]
ARCH_KEYS = ("input_shape", "num_classes", "d", "depth")

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, -4, 1, 2, 10**9, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "abc", "1", "x", "nan", "pytest-fa.bundle", "../../etc", "é∂"]),
    st.text(max_size=6).filter(lambda s: s not in ARCH_KEYS),
)
_small_tensors = st.builds(
    lambda shape, fill, dtype: torch.full(shape, fill).to(dtype),
    st.lists(st.integers(0, 3), max_size=2).map(tuple),
    st.sampled_from([0.0, 1.0, NAN, INF]),
    st.sampled_from([torch.float32, torch.int64, torch.bool, torch.float16]),
)
# junk of any weights_only-loadable type; dict keys never name a model size (see BAD_SIZES)
JUNK = st.recursive(
    _scalars | _small_tensors,
    lambda kids: st.lists(kids, max_size=3)
    | st.dictionaries(st.sampled_from(["", "x", "key", "é", "lr"]) | st.integers(-2, 2), kids, max_size=3)
    | st.tuples(kids, kids),
    max_leaves=5,
)


def _wrong_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    if len(shape) == 2:
        a, b = shape
        return [(b, a), (a, b + 1), (a + 1, b), (a,), (1, a, b), (0, b), (), (a * b,)]
    (a,) = shape
    return [(a + 1,), (a - 1,), (1, a), (), (0,)]


def _poke(like: torch.Tensor, value: float, index: int) -> torch.Tensor:
    out = like.clone()
    out.view(-1)[index] = value
    return out


def bad_tensors(like: torch.Tensor) -> st.SearchStrategy[torch.Tensor]:
    """A tensor that stands where ``like`` stood: bad values, wrong shape or wrong dtype."""
    fills = st.sampled_from([0.0, NAN, INF, -INF, 1e38, -1e38, 1e-45, 65504.0, 1.0])
    options = [
        fills.map(lambda f: torch.full(like.shape, f, dtype=like.dtype)),
        st.builds(_poke, st.just(like), fills, st.integers(0, like.numel() - 1)),
        st.sampled_from([0.0, -1.0, 1e-30, 1e30]).map(lambda s: like * s),
        st.sampled_from(_wrong_shapes(tuple(like.shape))).map(torch.zeros),
        st.sampled_from([torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool,
                         torch.complex64, torch.uint8]).map(like.to),
    ]
    if like.dim() == 2:
        options.append(st.just(like.t().contiguous()))
    return st.one_of(options)


def bundle_mutations(base: dict[str, Any]) -> st.SearchStrategy[list[tuple[tuple, Any]]]:
    """One or two ``(path, value)`` edits of a bundle's payload; ``DELETE`` removes the key."""
    tensor_keys = ["embed.weight", "embed.bias", "blocks.0.w1.weight", "blocks.3.ln.bias", "out_ln.weight",
                   "out_head.weight", "out_head.bias"]
    scaled = st.sampled_from([0.0, 1e-30, 1e30, -1.0]).map(lambda s: {k: v * s for k, v in base["state_dict"].items()})
    edits: list[tuple[tuple, st.SearchStrategy]] = [
        (("format",), st.sampled_from(["pytest-fa.bundle ", "PYTEST-FA.BUNDLE", ""]) | JUNK),
        (("format_version",), st.sampled_from(["1", 0, 2, -1, 1.0, True, 10**30, None]) | JUNK
         | st.sampled_from([1, [1, 1], [[1]]]).map(torch.tensor)),
        (("arch",), st.sampled_from(["resmlp ", "RESMLP", "vit-mini", "smallcnn", "studentnet", "custom", "", "x"])
         | JUNK),
        (("arch_config",), JUNK),
        (("arch_config", "input_shape"), st.sampled_from(BAD_SHAPES)),
        (("arch_config", "num_classes"), st.sampled_from(BAD_SIZES)),
        (("arch_config", "d"), st.sampled_from(BAD_SIZES)),
        (("arch_config", "depth"), st.sampled_from(BAD_DEPTHS)),
        (("arch_config", "width"), JUNK),
        (("arch_config", 3), JUNK),
        (("state_dict",), JUNK | scaled),
        *[(("state_dict", key), bad_tensors(base["state_dict"][key]) | JUNK) for key in tensor_keys],
        (("state_dict", "blocks.4.w1.weight"), bad_tensors(base["state_dict"]["blocks.0.w1.weight"])),
        (("method",), st.sampled_from(["bp", "fa", "frozen", "DFA", "dfa ", "", "nope"]) | JUNK),
        (("method_config",), JUNK),
        (("method_config", "penalty"), JUNK),
        (("method_config", "unknown"), JUNK),
        (("feedback",), JUNK | st.just(torch.stack(base["feedback"]))
         | st.just([b.t().contiguous() for b in base["feedback"]])),
        *[(("feedback", i), bad_tensors(base["feedback"][0]) | JUNK) for i in range(len(base["feedback"]) + 1)],
        (("aux",), JUNK),
        (("aux", "x"), JUNK),
        (("data",), JUNK),
        (("data", "name"), st.sampled_from(["MNIST1D", "cifar10", "fashion-mnist", "synthetic", "nope", "",
                                            "../mnist1d"]) | JUNK),
        (("data", "root"), st.sampled_from(["/tmp", "/etc", "", ".", "/nonexistent", "~"]) | JUNK),
        (("data", "config"), JUNK),
        # a valid num_samples or seed would generate a data set; one beyond MAX_SAMPLES is refused first
        (("data", "config", "num_samples"), st.sampled_from([-1, 0, 9, "6000", 6000.0, None, True, NAN,
                                                             MAX_SAMPLES + 1, 2**70])),
        (("data", "config", "seed"), st.sampled_from([-1, "42", None, 42.0, 1.5, True])),
        (("data", "config", "root"), JUNK),
        (("data", "config", "name"), JUNK),
        (("data", "config", 3), JUNK),
        (("data", "preprocessing"), JUNK),
        (("data", "extra"), JUNK),
        (("seed",), st.sampled_from(["abc", -1, 2**64, 2**63, 1.5, None, True, [1], 43]) | JUNK
         | st.just(torch.tensor(3))),
        (("epochs",), st.sampled_from([0, -4, "x", 10**9, 2.0, True, None, 1, 2, 3]) | JUNK),
        (("recipe",), JUNK),
        *[(("recipe", key), st.sampled_from([-1, 0, NAN, INF, "x", None, 10**9, True, 1e-3, "cosine", "sgd"]) | JUNK)
          for key in ("lr", "weight_decay", "batch_size", "schedule", "optimizer", "unknown")],
        (("metrics",), JUNK),
        (("metrics", "test_acc"), st.sampled_from([-0.1, 1.1, NAN, INF, "0.9", None, True, 0.99, 0.0, 1.0]) | JUNK),
        (("metrics", "planned_epochs"), st.sampled_from(["x", -4, 0, 1, 2, 3, 10**9, 2.5, None]) | JUNK),
        (("metrics", "history"), JUNK),
        (("extra",), JUNK),
        ((3,), JUNK),
    ]
    edit = st.one_of(
        [st.tuples(st.just(path), values) for path, values in edits]
        + [st.tuples(st.just(path), st.just(DELETE)) for path, _ in edits]
    )
    budget = st.sampled_from([(10**9, 2), (3, 2), (2, None), (None, 2), (1, 10**9), (2, 2)]).map(
        lambda pair: [(("epochs",), pair[0]), (("metrics", "planned_epochs"), pair[1])]
    )
    return st.lists(edit, min_size=1, max_size=2) | budget


def apply_edits(payload: dict[str, Any], mutations) -> dict[str, Any]:
    for path, value in mutations:
        target: Any = payload
        for key in path[:-1]:
            if isinstance(target, dict) and key in target:
                target = target[key]
            else:
                target = None  # an earlier edit replaced the container
                break
        last = path[-1]
        if isinstance(target, dict):
            if value is DELETE:
                target.pop(last, None)
            else:
                target[last] = value
        elif isinstance(target, list) and isinstance(last, int) and value is not DELETE:
            target[last:last + 1] = [value]
        elif isinstance(target, list) and isinstance(last, int) and last < len(target):
            del target[last]
    return payload


def touches(mutations, *prefix) -> bool:
    return any(path[:len(prefix)] == prefix for path, _ in mutations)


def one_epoch_train(data, method, **kwargs):
    """The real trainer on 256 samples, stopped after its first epoch: the baseline's recipe,
    seed and schedule are exercised without training a baseline per example."""
    small = dataclasses.replace(data, x_train=data.x_train[:256], y_train=data.y_train[:256],
                                x_test=data.x_test[:256], y_test=data.y_test[:256])
    return trainer.train(small, method, **{**kwargs, "on_epoch": lambda model, record: True})


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # a bundle with d=0
@pytest.mark.filterwarnings("error:Casting complex values to real")  # a model other than the stored one
def test_fuzz_bundle_fields(base_payload, runner, base_report, fuzz_root, monkeypatch):
    """Edit one or two fields of a real bundle and run the protocol on it as the command line
    does: a clear FAError, or a measured report; the bundle's folder stays as it was. A bundle
    whose budget fields were edited and that loads also starts its baseline's training."""
    monkeypatch.setattr(protocol, "train", one_epoch_train)
    baseline_runner = ProtocolRunner(ProtocolSettings(device="cpu", cache_dir=str(fuzz_root / "baselines")))
    counts: Counter = Counter()
    numbers = itertools.count()

    @FUZZ
    @given(mutations=bundle_mutations(base_payload))
    def check(mutations):
        counts["examples"] += 1
        folder = fuzz_root / "bundles" / str(next(numbers))
        folder.mkdir(parents=True)
        path = folder / "bundle.pt"
        torch.save(apply_edits(copy.deepcopy(base_payload), mutations), path)
        (folder / "notes.txt").write_text("not a report\n")
        before = snapshot(folder)
        try:
            report = runner.report(str(path))
        except FAError as exc:
            assert_clear(str(exc))
            counts["clear error"] += 1
        else:
            bad = nonfinite_verdicts(report)
            assert not bad, f"a verdict on what was not measured: {bad} in\n{report}"
            counts["measured report"] += 1
            for key in ("a", "c"):  # an undefined growth or stability: not evaluated, with the reason
                if not report.diagnostics[key].evaluated:
                    assert report.diagnostics[key].detail.startswith("not evaluated: "), report.diagnostics[key]
                    counts[f"measured report: ({key}) not evaluated"] += 1
            assert_measured(report, 0.5, [base_report])
            if not any(touches(mutations, k) for k in ("state_dict", "arch", "arch_config", "data")):
                assert report.headline_acc == base_report.headline_acc, "the recorded accuracy, not the measured one"
            if any(touches(mutations, k) for k in ("seed", "epochs", "recipe", "metrics")):
                try:
                    baseline_runner.frozen_baseline(str(path))
                    counts["baseline: trained"] += 1
                except FAError as exc:
                    assert_clear(str(exc))
                    counts["baseline: clear error"] += 1
        assert snapshot(folder) == before
        shutil.rmtree(folder)

    check()
    print(f"\nbundle fields: {dict(counts)}")
    assert counts["examples"] >= 350


# =============================================================================================
# 2. Option values
# =============================================================================================

ALL_OPTIONS = {o.name: o for o in OPTIONS + THRESHOLD_OPTIONS}
_numbers = st.sampled_from(["0", "-1", "1", "2", "7", "8", "9", "128", "1e3", "1.5", "nan", "inf", "-inf",
                            "1e308", "1e-320", "1_000", " 8 ", "0x10", "", "10**9", "9" * 30, "1e999"])
_floats = st.floats(allow_nan=True, allow_infinity=True).map(repr)
_text = st.text(st.characters(blacklist_characters="\x00\n\r", blacklist_categories=("Cs",)), max_size=12)
# importable and harmless: what a typo or a wrong callable in --fa-model or --fa-credit reaches
_SPECS = ["", "x", ":", "a:", ":b", "a:b:c", ".x:y", "..:y", "x.:y", "math:pi", "math:sqrt", "builtins:max",
          "builtins:dict", "builtins:zip", "collections:OrderedDict", "functools:partial", "operator:itemgetter",
          "torch.nn:Identity", "nomodule_xyz:build", "pytest_fa.models:ResMLP", "pytest_fa.models:build_model",
          "pytest_fa.core.credit:DFACredit"]
_CHOICES = {
    "device": ["auto", "cpu", "cuda", "cuda:0", "cuda:x", "mps", "CPU", "", "cpu:0", "meta"],
    "block_output": ["auto", "sum", "branch", "", "Sum"],
    "pooling": ["cls", "mean", "all", "max", ""],
    "b_rule": ["decomposed", "paper", "", "Paper"],
    "data": ["mnist1d", "synthetic", "cifar10", "nope", "", "MNIST1D"],
    "hidden": ["embed,blocks.*", "embed,blocks", "embed", "*", "[", ",", " ", "blocks.*", "embed,blocks.[0-"],
    "model": _SPECS,
    "credit": _SPECS,
    "compare_fail": ["headline_acc:1pp", "deep_gamma:0.05", "growth:20%", "grad_ref:10x", "x", ":",
                     "headline_acc:", "headline_acc:-1pp", "headline_acc:nanpp", "growth:1e999%"],
}
_PATHS = ("nothing-here", "folder", "notes.txt", "saved.json", "empty.json", "bundle")


def option_values(name: str) -> st.SearchStrategy:
    """Drawn raw values of one option (strings, as on a command line or in an ini file)."""
    option = ALL_OPTIONS[name]
    if option.type is bool:
        return st.booleans()
    if name in _CHOICES:  # mostly the listed values, which reach further than random text
        raw = st.integers(0, 3).flatmap(lambda n: _text if n == 0 else st.sampled_from(_CHOICES[name]))
    elif option.is_path:
        raw = st.sampled_from(_PATHS)
    elif option.type in (int, float):
        raw = _numbers | _floats | st.integers(-(10**6), 10**6).map(str) | _text
    else:
        raw = _text
    return st.lists(raw, min_size=1, max_size=2) if option.repeat else raw


def drawn_options() -> st.SearchStrategy[dict[str, tuple[str, Any]]]:
    """Up to four options, each with its source (command line or ini) and raw value."""
    names = st.lists(st.sampled_from(sorted(ALL_OPTIONS)), min_size=1, max_size=4, unique=True)
    return names.flatmap(lambda chosen: st.fixed_dictionaries(
        {name: st.tuples(st.sampled_from(["cli", "ini"]), option_values(name)) for name in chosen}
    ))


class OptionsConfig:
    """What the plugin's start-up reads of a ``pytest.Config``: the ``--fa-*`` options (converted
    as argparse converts them), the ini keys (raw strings), the ini file's path; a stash and a
    plugin manager for ``pytest_configure``."""

    def __init__(self, cli: dict[str, Any], ini: dict[str, Any], inipath: Path) -> None:
        self.cli, self.ini, self.inipath = cli, ini, inipath
        self.stash = pytest.Stash()
        self.pluginmanager = SimpleNamespace(register=lambda plugin, name=None: None, getplugin=lambda name: None)
        self.args_source, self.args = pytest.Config.ArgsSource.ARGS, []

    def getoption(self, dest: str) -> Any:
        option = ALL_OPTIONS[dest.removeprefix("fa_")]
        return self.cli.get(option.name, [] if option.repeat else None)

    def getini(self, key: str) -> Any:
        option = ALL_OPTIONS[key.removeprefix("fa_")]
        return self.ini.get(option.name, [] if option.repeat else (False if option.type is bool else ""))

    def addinivalue_line(self, name: str, line: str) -> None:
        pass


def argparse_value(option, raw: Any) -> Any:
    """``raw`` converted as the option's argparse action converts it (ValueError: a usage error)."""
    if option.type is bool:
        return True if raw else None
    if option.repeat:
        return list(raw)
    return option.type(raw)


def option_folder(root: Path) -> Path:
    """A folder with what path options can point at: a saved report, junk, the bundle."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "folder").mkdir(exist_ok=True)
    (root / "notes.txt").write_text("not a report\n")
    (root / "empty.json").write_text(json.dumps({"pytest_fa": __version__, "reports": [], "seed_groups": []}))
    return root


def resolved_path(folder: Path, bundle: Path, raw: str) -> str:
    return str(bundle) if raw == "bundle" else str(folder / raw)


def test_fuzz_option_values(runner, base_report, dfa_bundle, fuzz_root, pytester):
    """Drawn values of every ``--fa-*`` option through the plugin's own parser: a usage error
    that names an option given, or settings that hold and a report that does not crash."""
    folder = option_folder(fuzz_root / "options")
    (folder / "saved.json").write_text(json.dumps(
        {"pytest_fa": __version__, "reports": [base_report.to_dict()], "seed_groups": []}))
    reports: dict[tuple, str] = {}
    counts: Counter = Counter()
    sessions: list[list[str]] = []

    @FUZZ
    @given(drawn=drawn_options())
    def check(drawn):
        counts["examples"] += 1
        cli, ini = {}, {}
        for name, (source, raw) in drawn.items():
            option = ALL_OPTIONS[name]
            if option.is_path:
                raw = [resolved_path(folder, dfa_bundle, r) for r in raw] if option.repeat \
                    else resolved_path(folder, dfa_bundle, raw)
            if source == "ini" and option.type is not bool:
                ini[name] = raw
                continue
            try:
                cli[name] = argparse_value(option, raw)
            except ValueError:  # argparse: "invalid int value", a usage error
                counts["usage error (argparse)"] += 1
                return
        config = OptionsConfig(cli, ini, folder / "pytest.ini")
        try:
            plugin.pytest_configure(config)  # session_settings, then the start-up checks
        except pytest.UsageError as exc:
            message = str(exc)
            assert_clear(message)
            assert any(ALL_OPTIONS[n].flag in message or ALL_OPTIONS[n].ini in message for n in drawn), \
                f"the message names none of the options given {sorted(drawn)}: {message}"
            assert "setting `" not in message, message
            counts["usage error"] += 1
            return
        counts["accepted"] += 1
        settings = config.stash[STATE_KEY].settings
        assert settings == session_settings(config)
        assert settings.eval_batches >= 8 and settings.batch_size >= 2
        assert settings.frozen_acc is None or 0.0 <= settings.frozen_acc <= 1.0
        assert settings.frozen_epochs is None or settings.frozen_epochs >= 1
        outcome = _report_outcome(settings, dfa_bundle, fuzz_root, reports)
        counts[outcome] += 1
        if len(sessions) < PYTESTER_RUNS and "pitfalls" not in drawn and not outcome.startswith("known hole"):
            sessions.append(_session_args(drawn, cli, ini, folder, dfa_bundle))

    check()
    for args in sessions:
        _check_session(pytester, args)
        counts["pytest sessions"] += 1
    print(f"\noption values: {dict(counts)}")
    assert counts["examples"] >= 350


def _report_outcome(settings: SessionSettings, bundle: Path, fuzz_root: Path, seen: dict[tuple, str]) -> str:
    """A report on the small bundle under ``settings`` (``frozen_acc`` 0.5 unless given)."""
    used = dataclasses.replace(
        settings, frozen_acc=0.5 if settings.frozen_acc is None else settings.frozen_acc,
        cache_dir=str(fuzz_root / "cache"),
    )
    key = tuple(getattr(used, f.name) for f in dataclasses.fields(ProtocolSettings))
    if key not in seen:
        try:
            report = ProtocolRunner(used).report(str(bundle))
        except FAError as exc:
            assert_clear(str(exc))
            if isinstance(exc, CreditSignalError):  # a --fa-credit signal that raised or returned no a_l
                assert "setting `credit=" in str(exc), str(exc)
            seen[key] = "clear error in the report"
        else:
            assert not nonfinite_verdicts(report), report
            assert_measured(report, used.frozen_acc)
            seen[key] = "measured report"
    return seen[key]


def _session_args(drawn, cli, ini, folder: Path, bundle: Path) -> list[str]:
    """The drawn options on a command line, with the small bundle, ``frozen_acc`` and the CPU."""
    args = []
    for name in drawn:
        option = ALL_OPTIONS[name]
        value = ini[name] if name in ini else cli[name]
        if option.type is bool:
            args += [option.flag] if value else []
        elif option.repeat:
            args += [f"{option.flag}={v}" for v in value]
        else:
            args.append(f"{option.flag}={value}")
    if "checkpoint" not in drawn:
        args.append(f"--fa-checkpoint={bundle}")
    if "frozen_acc" not in drawn:
        args.append("--fa-frozen-acc=0.5")
    if "device" not in drawn:
        args.append("--fa-device=cpu")
    return args


def _check_session(pytester: pytest.Pytester, args: list[str]) -> pytest.RunResult:
    """A whole in-process pytest session: no INTERNALERROR, and every failed item says why in
    its own words (a raw exception would show pytest's traceback instead)."""
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    text = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in text, f"{args}\n{text}"
    assert result.ret in (0, 1, 4, 5), f"{args}\n{text}"
    reports = result.reprec.getreports("pytest_runtest_logreport") if result.ret != pytest.ExitCode.USAGE_ERROR else []
    for report in reports:
        if report.failed:
            assert isinstance(report.longrepr, str), f"{args}: {report.nodeid}\n{report.longrepr}"
    return result


# =============================================================================================
# 3. Report paths
# =============================================================================================

# what a report path can meet, made fresh in every example's folder
_ENTRIES = ["notes.txt", "old.json", "sub", "sub/keep.txt", "file.txt", "loop", "fifo", "link_ckpt",
            "link_notes", "dangling"]
_NAMED = _ENTRIES + ["file.txt/r.json", "sub/new.json", "a/b/c/r.json", "", ".", "..", "sub/../r.json",
                     "loop/r.json", "fifo/r.json", "link_notes/r.json", "dangling/r.json", "r.json", "x" * 300,
                     "CKPT", "CKPT_DIR", "CKPT_DIR/./ckpt.pt", "sub/../../../fuzz-ckpt/ckpt.pt"]
_odd_names = st.text(st.characters(blacklist_characters="\x00/", blacklist_categories=("Cs",)), min_size=1,
                     max_size=24)
REPORT_PATHS = st.sampled_from(_NAMED) | _odd_names | st.tuples(_odd_names, _odd_names).map("/".join)


def report_folder(folder: Path, checkpoint: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("not a report\n")
    (folder / "old.json").write_text("{}\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "keep.txt").write_text("keep\n")
    (folder / "file.txt").write_text("a file\n")
    os.symlink("loop", folder / "loop")
    os.mkfifo(folder / "fifo")
    os.symlink(checkpoint, folder / "link_ckpt")
    os.symlink("notes.txt", folder / "link_notes")
    os.symlink("missing/target.json", folder / "dangling")


def _spelled(raw: str, checkpoint: Path) -> str:
    return raw.replace("CKPT_DIR", str(checkpoint.parent)).replace("CKPT", str(checkpoint))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@pytest.fixture(scope="module")
def fixed_checkpoint(fuzz_root, dfa_bundle, runner) -> Path:
    """The checkpoint every report-path example names, diagnosed once (the runner keeps it)."""
    folder = fuzz_root / "fuzz-ckpt"
    folder.mkdir()
    path = folder / "ckpt.pt"
    shutil.copy(dfa_bundle, path)
    (folder / "other.txt").write_text("beside the checkpoint\n")
    runner.report(str(path))
    return path


def test_fuzz_report_paths(runner, fixed_checkpoint, fuzz_root, pytester):
    """Drawn paths for ``--fa-report-json``, ``--fa-report-md`` and ``--fa-plot`` (relative to
    a folder with files, links, a FIFO and a symlink loop): the start-up check refuses them
    with a usage error, or accepts them, and then writing the reports changes no other file."""
    counts: Counter = Counter()
    numbers = itertools.count()
    sessions: list[tuple[Path, list[str]]] = []
    home = os.getcwd()

    paths = st.fixed_dictionaries({
        "report_json": st.none() | REPORT_PATHS,
        "report_md": st.none() | REPORT_PATHS,  # hypothesis draws it equal to the JSON path often enough
        # a figure takes most of a second: few plots
        "plot": st.integers(0, 23).flatmap(lambda n: REPORT_PATHS if n == 0 else st.none()),
    })

    @FUZZ
    @given(drawn=paths)
    def check(drawn):
        counts["examples"] += 1
        folder = fuzz_root / "reports" / str(next(numbers))
        report_folder(folder, fixed_checkpoint)
        os.chdir(folder)
        try:
            counts[_report_paths_case(drawn, folder, fixed_checkpoint, runner, sessions)] += 1
        finally:
            os.chdir(home)

    check()
    for folder, args in sessions:
        os.chdir(folder)
        try:
            _report_session(pytester, folder, fixed_checkpoint, args)
        finally:
            os.chdir(home)
        counts["pytest sessions"] += 1
    print(f"\nreport paths: {dict(counts)}")
    assert counts["examples"] >= 350


def _report_paths_case(drawn, folder: Path, checkpoint: Path, runner, sessions) -> str:
    values = {k: (None if v is None else _spelled(v, checkpoint)) for k, v in drawn.items()}
    cli = {"checkpoint": [str(checkpoint)], "frozen_acc": 0.5, "device": "cpu",
           **{k: v for k, v in values.items() if v is not None}}
    config = OptionsConfig(cli, {}, folder / "pytest.ini")
    before = snapshot(folder, checkpoint.parent)
    try:
        plugin.pytest_configure(config)  # session_settings, then the start-up checks
    except pytest.UsageError as exc:
        message = str(exc)
        assert_clear(message)
        assert any(f"--fa-{k.replace('_', '-')}" in message for k, v in values.items() if v is not None), message
        assert snapshot(folder, checkpoint.parent) == before
        return "usage error"
    unsafe = _unsafe_to_write(values, checkpoint)
    assert unsafe is None, f"accepted at start-up: {unsafe}"  # not written here: it would destroy or hang
    links = {os.path.realpath(v) for k, v in values.items() if k != "plot" and v is not None and os.path.islink(v)}
    state = config.stash[STATE_KEY]
    state._runner = runner  # the report of this checkpoint is computed once for the module
    plugin.pytest_sessionfinish(SimpleNamespace(config=config, exitstatus=0), 0)
    if state.write_errors:  # a report that could not be written: named, the old file kept
        for error in state.write_errors:
            assert_clear(error)
            assert error.startswith("--fa-"), error
        return "write error"
    changed = _changes(before, snapshot(folder, checkpoint.parent), values)
    wrong = _contents(values)
    if changed or wrong:
        assert not _overlap(values), f"overlapping report paths were accepted: {values}"
        assert not wrong, "\n".join(wrong)
        # a report named through a link is written at the link's target, with the folders it needs
        targets = {os.path.realpath(v) for v in values.values() if v is not None}
        written = links | {str(p) for target in targets for p in (Path(target), *Path(target).parents)}
        figures = None if values["plot"] is None else Path(os.path.realpath(values["plot"]))
        unnamed = [line for path, line in changed
                   if path not in written and (figures is None or figures not in Path(path).parents)]
        assert not unnamed, "\n".join(unnamed)
        return "written through a link"
    if len(sessions) < PYTESTER_RUNS:
        sessions.append((folder, [f"--fa-{k.replace('_', '-')}={v}" for k, v in values.items() if v is not None]))
    return "written"


def _allowed(values: dict[str, str | None]) -> tuple[set[str], list[str]]:
    """The report files, and the plot folder, where anything may appear."""
    files = {os.path.abspath(values[k]) for k in ("report_json", "report_md") if values[k] is not None}
    folders = [os.path.abspath(values["plot"])] if values["plot"] is not None else []
    return files, folders


def _changes(before: dict, after: dict, values) -> list[tuple[str, str]]:
    """``(path, what changed)`` for every entry that changed and is no report."""
    files, folders = _allowed(values)
    parents = {str(p) for f in [*files, *folders] for p in Path(f).parents}
    changed = []
    for path in sorted(set(before) | set(after)):
        if before.get(path) == after.get(path) or path in files or any(_inside(path, f) for f in folders):
            continue
        if path not in before and path in parents and after[path] == ("folder",):
            continue
        changed.append((path, f"{path}: {before.get(path)} -> {after.get(path)}"))
    return changed


def _contents(values) -> list[str]:
    """Each report holds what it should: JSON in the JSON file, Markdown in the Markdown file."""
    problems = []
    if values["report_json"] is not None:
        try:
            json.loads(Path(values["report_json"]).read_text())["reports"][0]["verdict"]
        except (OSError, ValueError, KeyError, IndexError) as exc:
            problems.append(f"{values['report_json']}: no JSON report ({exc!r})")
    if values["report_md"] is not None:
        try:
            text = Path(values["report_md"]).read_text()
        except OSError as exc:
            text = repr(exc)
        if not text.startswith("# pytest-fa protocol report"):
            problems.append(f"{values['report_md']}: no Markdown report ({text[:40]!r})")
    if values["plot"] is not None and not list(Path(values["plot"]).glob("*.png")):
        problems.append(f"{values['plot']}: no figure")
    return problems


def _overlap(values) -> bool:
    """Whether two of the report paths are one path, or one lies inside another."""
    given = [v for v in values.values() if v is not None]
    for i, a in enumerate(given):
        for b in given[i + 1:]:
            real_a, real_b = os.path.realpath(a), os.path.realpath(b)
            lexical_a, lexical_b = os.path.abspath(a), os.path.abspath(b)
            if real_a == real_b or _inside(lexical_a, lexical_b) or _inside(lexical_b, lexical_a):
                return True
    return False


def _unsafe_to_write(values, checkpoint: Path) -> str | None:
    """A report path that must be refused at start-up: writing it would destroy the checkpoint,
    or hang on a FIFO."""
    for key in ("report_json", "report_md"):
        path = values[key]
        if path is None:
            continue
        if os.path.realpath(path) == os.path.realpath(checkpoint):
            return f"{key}={path} is the checkpoint"
        if os.path.exists(path) and stat.S_ISFIFO(os.stat(path).st_mode):
            return f"{key}={path} is a FIFO"
    return None


def _report_session(pytester: pytest.Pytester, folder: Path, checkpoint: Path, args: list[str]) -> None:
    """The same paths in a whole pytest session, run in the example's folder."""
    values = {name: None for name in ("report_json", "report_md", "plot")}
    for arg in args:
        flag, _, value = arg.partition("=")
        values[flag.removeprefix("--fa-").replace("-", "_")] = value
    before = snapshot(folder, checkpoint.parent)
    result = _check_session(pytester, [f"--fa-checkpoint={checkpoint}", "--fa-frozen-acc=0.5", "--fa-device=cpu",
                                       *args])
    assert result.ret in (0, 1)
    problems = [line for _, line in _changes(before, snapshot(folder, checkpoint.parent), values)]
    assert not problems + _contents(values), "\n".join(problems + _contents(values))
