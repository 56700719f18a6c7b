"""One settings definition from the command line to the verdict; the session state's one
report cache; flag-neutral library errors reworded by the plugin."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

import pytest_fa
from pytest_fa import plugin
from pytest_fa.core.settings import (
    ProtocolSettings,
    SessionSettings,
    SettingError,
    option_fields,
)
from pytest_fa.core.thresholds import threshold_fields
from pytest_fa.errors import CheckpointError, as_flags, setting

PACKAGE = Path(pytest_fa.__file__).parent
# what speaks to the command line by design: the pytest layer, the fixtures, the settings
COMMAND_LINE_PARTS = {"plugin", "pitfalls", "lint"}
COMMAND_LINE_MODULES = {"fixtures.py", "settings.py"}


def test_every_option_is_a_settings_or_threshold_field():
    assert [o.field for o in plugin.OPTIONS] == [f.name for f in option_fields()]
    assert [o.name for o in plugin.THRESHOLD_OPTIONS] == [f.name for f in threshold_fields()]
    assert plugin.OPTIONS[0].name == "checkpoint"
    model = next(o for o in plugin.OPTIONS if o.field == "model_factory")
    assert (model.flag, model.ini) == ("--fa-model", "fa_model")
    assert all(f.name in {g.name for g in dataclasses.fields(SessionSettings)} for f in option_fields())


@pytest.mark.parametrize(
    ("kwargs", "name", "message"),
    [
        ({"eval_batches": 4}, "eval_batches", "needs at least 8 disjoint batches"),
        ({"batch_size": 1}, "batch_size", "at least 2 samples"),
        ({"frozen_acc": 65.0}, "frozen_acc", r"fraction in \[0, 1\]"),
        ({"frozen_epochs": 0}, "frozen_epochs", "at least 1 epoch"),
        ({"block_output": "both"}, "block_output", "auto, sum, branch"),
        ({"pooling": "max"}, "pooling", "cls, mean"),
        ({"hidden": " , "}, "hidden", "name the modules"),
        ({"device": "tpu"}, "device", "auto, cpu or cuda"),
    ],
)
def test_settings_validate_themselves_without_command_line_syntax(kwargs, name, message):
    with pytest.raises(SettingError, match=message) as info:
        ProtocolSettings(**kwargs)
    assert info.value.name == name and info.value.value == next(iter(kwargs.values()))
    assert "--fa-" not in str(info.value)


@pytest.mark.parametrize("device", ["cudax", "cuda:", "cuda:-1", "cuda:x", "cuda:0 ", "CPU", "mps", "cuda:٣"])
def test_a_device_is_auto_cpu_cuda_or_cuda_n(device):
    with pytest.raises(SettingError) as info:
        ProtocolSettings(device=device)
    assert info.value.name == "device"
    assert str(info.value) == f"device={device!r}: use auto, cpu or cuda (cuda:N for GPU number N = 0, 1, …)"
    assert ProtocolSettings(device="auto").device == "auto" and ProtocolSettings(device="cpu").device == "cpu"


def test_session_settings_need_a_saved_report_for_tolerances():
    with pytest.raises(SettingError, match="compare") as info:
        SessionSettings(compare_fail=("headline_acc:1pp",))
    assert as_flags(info.value.message).endswith("with --fa-compare=PATH too")
    assert SessionSettings(compare="old.json", compare_fail=("headline_acc:1pp",)).compare == "old.json"


def test_as_flags_rewrites_each_named_setting_to_its_option():
    text = f"pass {setting('model', 'package.module:build')} or {setting('frozen_acc')}; {setting('data_root', '<dir>')}"
    assert text == "pass setting `model=package.module:build` or setting `frozen_acc`; setting `data_root=<dir>`"
    assert as_flags(text) == "pass --fa-model=package.module:build or --fa-frozen-acc; --fa-data-root=<dir>"
    assert as_flags("nothing to rewrite `here`") == "nothing to rewrite `here`"


def _string_literals(tree: ast.AST) -> list[str]:
    """String constants that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_library_messages_never_spell_a_command_line_option():
    offenders = []
    for file in sorted(PACKAGE.rglob("*.py")):
        relative = file.relative_to(PACKAGE)
        if relative.parts[0] in COMMAND_LINE_PARTS or relative.name in COMMAND_LINE_MODULES:
            continue
        for text in _string_literals(ast.parse(file.read_text())):
            if "--fa-" in text and not text.startswith("--fa-") and "errors.py" not in str(relative):
                offenders.append(f"{relative}: {text[:80]!r}")
    assert offenders == []


def test_the_state_caches_each_report_once_and_keeps_errors(pytester, bp_bundle):
    config = pytester.parseconfigure(f"--fa-checkpoint={bp_bundle}", "--fa-checkpoint=missing.pt",
                                  "--fa-frozen-acc=0.5", "--fa-device=cpu", "-p", "no:cacheprovider")
    state = config.stash[plugin.STATE_KEY]
    assert state.settings.frozen_acc == 0.5 and state.settings.checkpoint == (str(bp_bundle), "missing.pt")
    calls = []
    runner = state.runner
    real = runner._diagnose
    runner._diagnose = lambda *args: calls.append(args[0]) or real(*args)
    first = state.report(str(bp_bundle))
    assert state.report(str(bp_bundle)) is first and calls == [str(bp_bundle)]
    assert state.reports() == [first]
    with pytest.raises(CheckpointError, match="does not exist") as one:
        state.report("missing.pt")
    with pytest.raises(CheckpointError) as two:
        state.report("missing.pt")
    assert one.value is two.value and calls == [str(bp_bundle), "missing.pt"]
    sent = state.unsent_report_dicts()
    assert [entry["path"] for entry in sent] == [str(bp_bundle)]
    assert state.unsent_report_dicts() == []  # a pytest-xdist worker sends each report once
    assert state.not_measured() == ["missing.pt"]


def test_a_threshold_walks_from_the_command_line_to_the_verdict_through_one_definition(pytester, bp_bundle):
    growth = 1.05  # below the small BP bundle's 1.14×
    result = pytester.runpytest("-p", "no:cacheprovider", f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0",
                                f"--fa-max-growth={growth}", "--fa-report-json=out.json")
    report = json.loads((pytester.path / "out.json").read_text())["reports"][0]
    assert report["thresholds"]["max_growth"] == growth
    assert report["diagnostics"]["a"]["threshold"] == growth and report["diagnostics"]["a"]["fires"]
    assert report["verdict"].startswith("needs walk-back: (a)")
    result.stdout.fnmatch_lines([f"*(a) residual growth fires*(fires > {growth}×)*"])
