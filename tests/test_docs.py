"""The documentation: docs/options.md is the generator's output and lists every option of
``pytest --help``; every relative link resolves; the README stays within 150 lines and
keeps CI's two commands; every recipe of docs/frameworks.md runs as written."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from torch import nn

import pytest_fa
from pytest_fa.core.credit import DFACredit, init_dfa_feedback
from pytest_fa.errors import NotBackpropError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Using a non-full backward hook"),
]


# -- docs/options.md ---------------------------------------------------------------------------
def _generator(name: str = "options_doc"):
    """The module of ``tools/<name>.py``, a script outside the package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # where dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_options_md_is_the_generators_output():
    assert (DOCS / "options.md").read_text(encoding="utf-8") == _generator().render(), (
        "docs/options.md is out of date: run python tools/options_doc.py")


def test_every_option_of_pytest_help_is_in_options_md(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
                               cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    flags = set(re.findall(r"^\s+(--fa-[a-z-]+)", help_text, re.M))
    inis = set(re.findall(r"^\s+(fa_[a-z_]+) \(", help_text, re.M))
    assert len(flags) >= 20 and len(inis) == len(flags), (sorted(flags), sorted(inis))
    doc = (DOCS / "options.md").read_text(encoding="utf-8")
    headed = set(re.findall(r"^### `(--fa-[a-z-]+)", doc, re.M))
    assert flags == headed, {"missing": sorted(flags - headed), "not an option": sorted(headed - flags)}
    assert [ini for ini in sorted(inis) if f"ini `{ini}`" not in doc] == []


# -- links and the README ----------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation and symbols dropped, spaces to -."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no such heading in {path.name}")
    assert broken == []


def test_the_readme_fits_in_150_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


MAIN_JOB = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.14.1 torchvision==0.29.1 -e . && "
    "fa-train --out runs/mnist1d && pytest runs/mnist1d --fa-checkpoint=runs/mnist1d/bp_s42.pt "
    "--fa-checkpoint=runs/mnist1d/dfa_s42.pt --fa-report-json=runs/mnist1d/report.json "
    "--fa-report-md=runs/mnist1d/report.md --fa-plot=runs/mnist1d/figures"
)
TESTS = ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.14.1 torchvision==0.29.1 '
         '-e ".[test]" && pytest')


def test_the_readme_keeps_the_two_commands_ci_runs():
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    assert MAIN_JOB + "\n" in blocks and TESTS + "\n" in blocks


# -- the recipes of docs/frameworks.md, as written ---------------------------------------------
def recipe(name: str) -> str:
    text = (DOCS / "frameworks.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```\w+\n(.*?)^```", text, re.M | re.S)
    assert match, f"no recipe {name!r} in docs/frameworks.md"
    return match.group(1)


def run_recipe(name: str, **given) -> dict:
    namespace = dict(given)
    exec(compile(recipe(name), f"docs/frameworks.md:{name}", "exec"), namespace)
    return namespace


def loader(shape, classes=10, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8 * batch, *shape, generator=g), torch.randint(0, classes, (8 * batch,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def check_small(monkeypatch):
    """``pytest_fa.check`` at batch 16: the recipes' models are tiny, their data random."""
    check = pytest_fa.check
    monkeypatch.setattr(pytest_fa, "check", lambda *args, **kwargs: check(*args, batch_size=16, **kwargs))


@pytest.mark.parametrize("mode", ["fa", "dfa"])
def test_the_biotorch_recipe_measures_against_the_twin(mode, monkeypatch, capsys):
    from test_backprop_reference import CLASSES, IN, biotorch_model

    check_small(monkeypatch)
    bio = biotorch_model(mode, d=32)
    with pytest.raises(NotBackpropError, match="autograd on BioModule is not backprop"):
        pytest_fa.check(pytest_fa.adapt(bio, ["module.embed", "module.blocks.*"]), loader([IN], CLASSES))
    report = run_recipe("biotorch", bio=bio, test_loader=loader([IN], CLASSES), frozen_acc=0.1)["report"]
    assert report.context["reference"].startswith("backprop through the reference model")
    assert all(g is not None and abs(g) < 0.9 for g in report.gamma_per_layer)  # random B_l: Γ ≈ 0
    assert "VERDICT" in capsys.readouterr().out


def test_the_biotorch_command_line_recipe_runs_as_written(pytester):
    pytest.importorskip("biotorch")
    from test_backprop_reference import FACTORY

    pytester.makepyfile(mymodels=FACTORY)
    pytester.syspathinsert()
    torch.save(importlib.import_module("mymodels").build().state_dict(), pytester.path / "bio.pt")
    args = shlex.split(recipe("biotorch-cli"))
    assert args[0] == "pytest"
    # the recipe's data replaced by the factory's: synthetic, at a small batch
    result = pytester.runpytest_subprocess(*args[1:], "--fa-data=synthetic", "--fa-batch-size=32",
                                           "--fa-report-json=report.json", "-p", "no:cacheprovider")
    assert result.ret in (0, 1), result.stdout.str()
    report = json.loads((pytester.path / "report.json").read_text())["reports"][0]
    assert report["gamma"]["status"] == "computed"


def test_the_torchvision_recipe_reads_a_vit_and_a_resnet(monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    check_small(monkeypatch)
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=10).eval()
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    done = run_recipe("torchvision", vit=vit, resnet=resnet, test_loader=loader([3, 32, 32]), frozen_acc=0.1)
    vit_report, resnet_report = done["reports"]
    assert vit_report.context["states"] == ["encoder.dropout", "encoder.layers.encoder_layer_0",
                                            "encoder.layers.encoder_layer_1"]
    assert (vit_report.layout, resnet_report.layout) == ("tokens_all", "spatial")
    assert vit_report.diagnostics["b"].fires and "Mode 1" in vit_report.diagnostics["b"].submode  # zero head
    assert len(resnet_report.layers) == 9 and resnet_report.context["states"][:2] == ["maxpool", "layer1.0"]


def test_the_timm_recipe_reads_a_vit_and_a_resnet(monkeypatch):
    timm = pytest.importorskip("timm")
    check_small(monkeypatch)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2).eval()
    resnet = timm.create_model("resnet18", num_classes=10).eval()
    done = run_recipe("timm", vit=vit, resnet=resnet, test_loader=loader([3, 32, 32]), frozen_acc=0.1)
    vit_report, resnet_report = done["reports"]
    assert vit_report.context["states"] == ["norm_pre", "blocks.0", "blocks.1"] and vit_report.layout == "tokens_all"
    assert all(row.g_norm > 0 for row in vit_report.layers)
    credit = DFACredit(init_dfa_feedback(10, [vit.embed_dim] * 3, torch.Generator().manual_seed(1)))
    with_credit = pytest_fa.check(done["vit"], loader([3, 32, 32]), credit=credit, frozen_acc=0.1)
    assert all(g is not None for g in with_credit.gamma_per_layer)  # F_l = d at the cls token
    assert len(resnet_report.layers) == 9 and resnet_report.layout == "spatial"


def test_a_timm_vit_pooled_by_the_mean_is_read_as_the_recipe_says(monkeypatch):
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2,
                            global_pool="avg").eval()
    model = pytest_fa.adapt(vit, ["norm_pre", "blocks.*"], norm="fc_norm", head="head", pooling="mean")
    report = pytest_fa.check(model, loader([3, 32, 32]), batch_size=16, frozen_acc=0.1)
    assert report.layout == "tokens_mean"
    h_L = torch.randn(4, vit.embed_dim)
    assert torch.equal(model.read_logits(h_L), vit.head(vit.fc_norm(h_L)))


class Residual(nn.Module):
    def __init__(self, d: int, linear) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = linear(d, d), nn.ReLU(), linear(d, d)

    def forward(self, h):
        return h + self.fc2(self.act(self.fc1(h)))


def fa_net(linear, d: int = 32, depth: int = 3, seed: int = 0) -> nn.Module:
    """A residual MLP built of the recipe's ``FALinear`` layers."""
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.embed = nn.Linear(12, d)
    net.blocks = nn.Sequential(*[Residual(d, linear) for _ in range(depth)])
    net.norm, net.head = nn.LayerNorm(d), nn.Linear(d, 10)
    return net


def test_the_autograd_function_recipe_is_refused_then_measured_against_its_twin(monkeypatch):
    check_small(monkeypatch)
    defined = run_recipe("autograd-function")
    net = fa_net(defined["FALinear"])
    with pytest.raises(NotBackpropError) as refused:
        pytest_fa.check(pytest_fa.adapt(net, ["embed", "blocks.*"]), loader([12]), frozen_acc=0.1)
    message = str(refused.value)
    assert "'blocks.0.fc1', 'blocks.0.fc2'" in message and "FALinearFunction" in message
    assert "a feedback weight `feedback` beside `weight`" in message
    report = run_recipe("autograd-function-check", **defined, net=net, test_loader=loader([12]),
                        frozen_acc=0.1)["report"]
    assert report.context["reference"].startswith("backprop through the reference model")
    *below, top = report.gamma_per_layer
    assert top == pytest.approx(1.0) and all(g < 0.99 for g in below), report.gamma_per_layer
    # the credit is what FA's backward delivers: with B = W, FA is backprop and Γ = 1 at every state
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, defined["FALinear"]):
                layer.feedback.copy_(layer.weight)
    aligned = run_recipe("autograd-function-check", **defined, net=net, test_loader=loader([12]),
                         frozen_acc=0.1)["report"]
    assert aligned.gamma_per_layer == pytest.approx([1.0] * len(aligned.gamma_per_layer), abs=1e-5)
