"""Tests for pytest_fa.models (the reference architectures) and the duck-typed interface
(pytest_fa.core.interface) that every model has to satisfy before it can be diagnosed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_fa.core import interface
from pytest_fa.errors import CheckpointError, ModelInterfaceError
from pytest_fa.models import ARCHITECTURES, build_model

VECTOR_SHAPE = (40,)
IMAGE_SHAPE = (1, 28, 28)
CLASSES = 10
BATCH = 6

# Small sizes keep the tests fast; every config divides the shapes above (ViT patch 4).
SMALL_CONFIGS = {
    "resmlp": {"d": 24, "depth": 3},
    "vit-mini": {"d": 16, "depth": 2, "heads": 2, "patch": 4, "mlp_ratio": 2},
    "smallcnn": {"channels": 6, "depth": 3, "fc": 12},
    "studentnet": {"d": 20, "depth": 3},
}
EXPECTED_LAYOUT = {"resmlp": "vector", "vit-mini": "tokens_all", "smallcnn": "spatial", "studentnet": "vector"}
EXPECTED_TERMINAL_NORM = {"resmlp": True, "vit-mini": True, "smallcnn": False, "studentnet": False}
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)

SHAPES = [pytest.param(VECTOR_SHAPE, id="1d"), pytest.param(IMAGE_SHAPE, id="image")]


def make(arch: str, shape, **overrides) -> nn.Module:
    torch.manual_seed(0)
    config = {**SMALL_CONFIGS[arch], **overrides}
    return build_model(arch, input_shape=shape, num_classes=CLASSES, **config)


def batch(shape, n: int = BATCH) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


def expected_hidden_shape(arch: str, shape) -> tuple[int, ...]:
    cfg = SMALL_CONFIGS[arch]
    if arch in ("resmlp", "studentnet"):
        return (BATCH, cfg["d"])
    if arch == "vit-mini":
        spatial = shape if len(shape) == 1 else shape[1:]
        tokens = math.prod(s // cfg["patch"] for s in spatial)
        return (BATCH, tokens + 1, cfg["d"])
    # smallcnn: 1-D signals keep their length, images go through a stride-2 stem
    if len(shape) == 1:
        return (BATCH, cfg["channels"], shape[0])
    return (BATCH, cfg["channels"], *(math.ceil(s / 2) for s in shape[1:]))


def test_architecture_registry_is_complete():
    assert set(ARCHITECTURES) == {"resmlp", "vit-mini", "smallcnn", "studentnet"}
    for name, cls in ARCHITECTURES.items():
        assert cls.arch == name


# -- forward contract and the residual identity ---------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", sorted(SMALL_CONFIGS))
def test_forward_returns_logits_and_all_hidden_states(arch, shape):
    model = make(arch, shape).eval()
    x = batch(shape)
    logits, hiddens = model(x, return_hidden=True)
    depth = SMALL_CONFIGS[arch]["depth"]
    assert logits.shape == (BATCH, CLASSES)
    assert isinstance(hiddens, list) and len(hiddens) == depth + 1 == len(model.blocks) + 1
    for h in hiddens:
        assert h.shape == expected_hidden_shape(arch, shape)
    # without return_hidden the model returns the same logits alone
    plain = model(x)
    assert isinstance(plain, torch.Tensor)
    torch.testing.assert_close(plain, logits)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", sorted(SMALL_CONFIGS))
def test_residual_identity_holds_at_every_block(arch, shape):
    model = make(arch, shape).eval()  # eval: SmallCNN's BatchNorm must use running stats
    x = batch(shape)
    with torch.no_grad():
        _, hiddens = model(x, return_hidden=True)
        for index, block in enumerate(model.blocks):
            branch = block(hiddens[index])
            assert branch.shape == hiddens[index].shape
            torch.testing.assert_close(hiddens[index + 1], hiddens[index] + branch)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", sorted(SMALL_CONFIGS))
def test_embedding_writes_h0_and_readout_reads_hL(arch, shape):
    model = make(arch, shape).eval()
    x = batch(shape)
    with torch.no_grad():
        logits, hiddens = model(x, return_hidden=True)
        embed = interface.embedding(model)
        norm, head = interface.readout(model)
        if arch == "vit-mini":
            assert embed is model.patch_embed
            signal = (1, *shape) if len(shape) == 1 else shape
            patches = embed(x.reshape(BATCH, *signal)).flatten(2).transpose(1, 2)
            # h_0 = [cls, patches] + positions: the patch tokens come from patch_embed
            torch.testing.assert_close(hiddens[0][:, 1:], patches + model.pos_embed[:, 1:])
            torch.testing.assert_close(logits, head(norm(hiddens[-1])[:, 0]))
        elif arch == "smallcnn":
            assert embed is model.embed
            signal = (1, *shape) if len(shape) == 1 else shape
            torch.testing.assert_close(hiddens[0], embed(x.reshape(BATCH, *signal)))
            assert norm is None
            torch.testing.assert_close(logits, head(hiddens[-1]))
        else:
            assert embed is model.embed
            torch.testing.assert_close(hiddens[0], embed(x.flatten(1)))
            if norm is not None:
                torch.testing.assert_close(logits, head(norm(hiddens[-1])))
            else:
                torch.testing.assert_close(logits, head(hiddens[-1]))


def test_smallcnn_image_stem_has_stride_two_and_1d_stem_stride_one():
    image = make("smallcnn", IMAGE_SHAPE)
    signal = make("smallcnn", VECTOR_SHAPE)
    assert isinstance(image.embed, nn.Conv2d) and image.embed.stride == (2, 2)
    assert isinstance(signal.embed, nn.Conv1d) and signal.embed.stride == (1,)
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in image.modules()) == 3


def test_vit_rejects_sizes_not_divisible_by_the_patch():
    with pytest.raises((ValueError, CheckpointError), match="divisible"):
        build_model("vit-mini", input_shape=[1, 30, 30], num_classes=CLASSES, patch=4)


def test_reference_defaults_match_the_design():
    resmlp = build_model("resmlp", input_shape=[40], num_classes=CLASSES)
    assert resmlp.config["d"] == 256 and len(resmlp.blocks) == 4
    vit = build_model("vit-mini", input_shape=[40], num_classes=CLASSES)
    assert vit.config["d"] == 128 and len(vit.blocks) == 4
    assert isinstance(vit.norm, nn.LayerNorm)
    cnn = build_model("smallcnn", input_shape=[40], num_classes=CLASSES)
    assert len(cnn.blocks) == 3
    assert [type(m) for m in cnn.head if isinstance(m, nn.Linear)] == [nn.Linear, nn.Linear]
    student = build_model("studentnet", input_shape=[32], num_classes=CLASSES)
    assert student.config["d"] == 128 and len(student.blocks) == 4


# -- interface helpers on every reference model ---------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", sorted(SMALL_CONFIGS))
def test_interface_helpers_on_reference_models(arch, shape):
    model = make(arch, shape).eval()
    interface.check_interface(model)  # raises if anything is missing
    assert interface.has_terminal_norm(model) is EXPECTED_TERMINAL_NORM[arch]
    x = batch(shape)
    logits, hiddens = interface.forward_hidden(model, x)
    assert logits.shape == (BATCH, CLASSES) and len(hiddens) == len(model.blocks) + 1
    layout = interface.hidden_layout(model, hiddens[0])
    assert layout == EXPECTED_LAYOUT[arch]
    for h in hiddens:
        rows = interface.per_sample(h, layout)
        if layout == "tokens_all":
            assert rows.shape == (BATCH, h.shape[-1])
            torch.testing.assert_close(rows, h[:, 0, :])  # Γ's rows: the cls token
            torch.testing.assert_close(interface.norm_rows(h, layout), h.flatten(1))  # the norms: all tokens
        else:
            assert rows.shape == (BATCH, math.prod(h.shape[1:]))
            torch.testing.assert_close(rows.reshape(h.shape), h)
    assert interface.per_sample(hiddens[0], layout).shape[1] == {
        "vector": SMALL_CONFIGS[arch].get("d"),
        "tokens_all": SMALL_CONFIGS[arch].get("d"),
        "spatial": math.prod(expected_hidden_shape(arch, shape)[1:]),
    }[layout]


@pytest.mark.parametrize("arch", sorted(SMALL_CONFIGS))
def test_block_weights_are_the_block_parameters_minus_normalisation(arch):
    model = make(arch, VECTOR_SHAPE)
    weights = interface.block_weights(model)
    ids = {id(p) for p in weights}
    assert len(ids) == len(weights), "a parameter is listed twice"
    norm_params = {
        id(p) for block in model.blocks for m in block.modules() if isinstance(m, NORM_TYPES)
        for p in m.parameters()
    }
    block_params = {id(p) for p in model.blocks.parameters()}
    assert norm_params, "every reference block has a normalisation layer"
    assert ids == block_params - norm_params
    outside = {id(p) for name, p in model.named_parameters() if not name.startswith("blocks.")}
    assert not ids & outside  # embedding, terminal norm and head are not block weights


def test_block_weights_of_resmlp_are_exactly_w1_and_w2():
    model = make("resmlp", VECTOR_SHAPE)
    names = {id(p): n for n, p in model.named_parameters()}
    got = sorted(names[id(p)] for p in interface.block_weights(model))
    expected = sorted(
        f"blocks.{i}.{w}.{kind}" for i in range(3) for w in ("w1", "w2") for kind in ("weight", "bias")
    )
    assert got == expected


# -- ResMLP exactly as DESIGN.md ------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_resmlp_structure(shape):
    torch.manual_seed(3)
    model = build_model("resmlp", input_shape=shape, num_classes=CLASSES, d=24, depth=2).eval()
    assert isinstance(model.embed, nn.Linear)
    assert (model.embed.in_features, model.embed.out_features) == (math.prod(shape), 24)
    assert isinstance(model.out_ln, nn.LayerNorm) and model.out_ln.normalized_shape == (24,)
    assert isinstance(model.out_head, nn.Linear)
    assert (model.out_head.in_features, model.out_head.out_features) == (24, CLASSES)
    x = batch(shape)
    with torch.no_grad():
        logits, hiddens = model(x, return_hidden=True)
        torch.testing.assert_close(hiddens[0], model.embed(x.reshape(BATCH, -1)))
        for index, block in enumerate(model.blocks):
            assert isinstance(block.ln, nn.LayerNorm)
            assert isinstance(block.w1, nn.Linear) and isinstance(block.w2, nn.Linear)
            assert block.w1.weight.shape == block.w2.weight.shape == (24, 24)
            h = hiddens[index]
            manual = block.w2(F.gelu(block.w1(block.ln(h))))  # pre-LN, GELU
            torch.testing.assert_close(block(h), manual)
            torch.testing.assert_close(hiddens[index + 1], h + manual)
        torch.testing.assert_close(logits, model.out_head(model.out_ln(hiddens[-1])))


def test_resmlp_w2_init_is_normal_with_std_001_and_zero_bias():
    torch.manual_seed(1234)
    model = build_model("resmlp", input_shape=[40], num_classes=CLASSES, d=256, depth=4)
    for block in model.blocks:
        w = block.w2.weight.detach().to(torch.float64)
        # 65536 draws: the sample std of N(0, 0.01) has sd ≈ 0.01/sqrt(2·65536) ≈ 2.8e-5 and the
        # mean has sd 0.01/256 ≈ 3.9e-5, so these bounds are > 17 sd away from flaking.
        assert abs(float(w.std()) - 0.01) < 5e-4
        assert abs(float(w.mean())) < 1e-3
        # Normal, not uniform: the excess kurtosis is ≈ 0 (uniform: −1.2; sd here ≈ 0.02)
        z = (w - w.mean()) / w.std()
        assert abs(float((z**4).mean()) - 3.0) < 0.3
        assert torch.count_nonzero(block.w2.bias) == 0
        # w1 keeps PyTorch's default init: much larger than w2
        assert float(block.w1.weight.detach().std()) > 0.02


# -- rebuilding from the recorded config ----------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", sorted(SMALL_CONFIGS))
def test_build_model_from_recorded_config_rebuilds_identical_architecture(arch, shape):
    model = make(arch, shape).eval()
    assert model.config["input_shape"] == list(shape)
    assert model.config["num_classes"] == CLASSES
    torch.manual_seed(99)  # a different init: only the architecture must match
    rebuilt = build_model(arch, **model.config)
    assert type(rebuilt) is type(model)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    x = batch(shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_build_model_unknown_name_lists_known_architectures():
    with pytest.raises(CheckpointError) as info:
        build_model("resnet50", input_shape=[40], num_classes=CLASSES)
    message = str(info.value)
    assert "resnet50" in message
    for name in ARCHITECTURES:
        assert name in message
    assert "setting `model=package.module:build`" in message


@pytest.mark.parametrize(
    "arch, config",
    [
        pytest.param("resmlp", {"input_shape": [40], "num_classes": CLASSES, "width": 32}, id="unknown-key"),
        pytest.param("resmlp", {"num_classes": CLASSES}, id="missing-input-shape"),
        pytest.param("studentnet", {"input_shape": [40]}, id="missing-num-classes"),
        pytest.param("smallcnn", {"input_shape": [40], "num_classes": CLASSES, "d": 8}, id="wrong-key-for-arch"),
        pytest.param("vit-mini", {"input_shape": [1, 30, 30], "num_classes": CLASSES, "patch": 4},
                     id="vit-size-not-divisible"),
        pytest.param("resmlp", {"input_shape": [40], "num_classes": CLASSES, "d": -4}, id="negative-width"),
        pytest.param("smallcnn", {"input_shape": [1, 4, 4, 4], "num_classes": CLASSES}, id="3d-input-for-cnn"),
    ],
)
def test_build_model_bad_config_is_a_checkpoint_error(arch, config):
    with pytest.raises(CheckpointError) as info:
        build_model(arch, **config)
    assert arch in str(info.value)


# -- user models that break the contract ----------------------------------------------------


class GoodModel(nn.Module):
    """A minimal custom model with the full contract, used as a positive control.

    The attribute names come from class attributes so that subclasses can rename one
    piece of the contract while the model itself keeps working.
    """

    EMBED, BLOCKS, NORM, HEAD = "embed", "blocks", "out_ln", "out_head"

    def __init__(self, d_in: int = 40, d: int = 16, depth: int = 2, classes: int = CLASSES) -> None:
        super().__init__()
        setattr(self, self.EMBED, nn.Linear(d_in, d))
        setattr(self, self.BLOCKS, nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Tanh()) for _ in range(depth)
        ))
        setattr(self, self.NORM, nn.LayerNorm(d))
        setattr(self, self.HEAD, nn.Linear(d, classes))

    def hidden_states(self, x):
        h = getattr(self, self.EMBED)(x.flatten(1))
        hiddens = [h]
        for block in getattr(self, self.BLOCKS):
            h = h + block(h)
            hiddens.append(h)
        return getattr(self, self.HEAD)(getattr(self, self.NORM)(h)), hiddens

    def forward(self, x, return_hidden: bool = False):
        logits, hiddens = self.hidden_states(x)
        return (logits, hiddens) if return_hidden else logits


class NoEmbed(GoodModel):
    EMBED = "stem"


class NoBlocks(GoodModel):
    BLOCKS = "layers"


class NoHead(GoodModel):
    HEAD = "classifier"


class NoReturnHidden(GoodModel):
    def forward(self, x):
        return self.hidden_states(x)[0]


class TooFewHiddens(GoodModel):
    def forward(self, x, return_hidden: bool = False):
        logits, hiddens = self.hidden_states(x)
        return (logits, hiddens[1:]) if return_hidden else logits


class LogitsOnly(GoodModel):
    def forward(self, x, return_hidden: bool = False):
        return self.hidden_states(x)[0]


class DetachedHiddens(GoodModel):
    def forward(self, x, return_hidden: bool = False):
        logits, hiddens = self.hidden_states(x)
        return (logits, [h.detach() for h in hiddens]) if return_hidden else logits


class CopiedHiddens(GoodModel):
    """Returns hidden states computed on a side path the logits never use."""

    def forward(self, x, return_hidden: bool = False):
        logits, hiddens = self.hidden_states(x)
        return (logits, [h * 1.0 for h in hiddens]) if return_hidden else logits


def test_good_custom_model_passes_the_contract():
    model = GoodModel()
    interface.check_interface(model)
    logits, hiddens = interface.forward_hidden(model, torch.randn(4, 40))
    assert logits.shape == (4, CLASSES) and len(hiddens) == 3
    assert interface.has_terminal_norm(model)
    assert interface.hidden_layout(model, hiddens[0]) == "vector"


@pytest.mark.parametrize(
    "cls, phrases",
    [
        pytest.param(NoEmbed, ["NoEmbed", "`embed`", "`patch_embed`", "h_0"], id="no-embed"),
        pytest.param(NoBlocks, ["NoBlocks", "`blocks`", "ModuleList", "f_l(h_l)"], id="no-blocks"),
        pytest.param(NoHead, ["NoHead", "`out_head`", "`head`", "expose"], id="no-head"),
    ],
)
def test_missing_interface_piece_names_what_to_add(cls, phrases):
    model = cls()
    model(torch.randn(2, 40))  # the model itself works; only the contract is broken
    with pytest.raises(ModelInterfaceError) as info:
        interface.check_interface(model)
    for phrase in phrases:
        assert phrase in str(info.value)


def test_forward_without_return_hidden_is_an_interface_error():
    model = NoReturnHidden()
    with pytest.raises(ModelInterfaceError) as info:
        interface.forward_hidden(model, torch.randn(2, 40))
    message = str(info.value)
    assert "return_hidden" in message and "(logits, [h_0, ..., h_L])" in message


def test_forward_raising_an_unrelated_type_error_is_not_masked():
    class Broken(GoodModel):
        def forward(self, x, return_hidden: bool = False):
            raise TypeError("something else went wrong")

    with pytest.raises(TypeError, match="something else"):
        interface.forward_hidden(Broken(), torch.randn(2, 40))


def test_wrong_number_of_hidden_states_is_an_interface_error():
    with pytest.raises(ModelInterfaceError) as info:
        interface.forward_hidden(TooFewHiddens(), torch.randn(2, 40))
    message = str(info.value)
    assert "2 hidden states for 2 blocks" in message and "L + 1" in message


def test_forward_returning_only_logits_is_an_interface_error():
    with pytest.raises(ModelInterfaceError, match=r"must return `\(logits, \[h_0, \.\.\., h_L\]\)`"):
        interface.forward_hidden(LogitsOnly(), torch.randn(2, 40))


def test_declared_hidden_layout_must_be_known():
    model = GoodModel()
    model.hidden_layout = "channels-last"
    with pytest.raises(ModelInterfaceError, match="vector"):
        interface.hidden_layout(model, torch.zeros(2, 16))


@pytest.fixture(scope="module")
def small_eval_batches(small_data):
    from pytest_fa.training.data import eval_batches

    return eval_batches(small_data, 8, 128)


def test_diagnose_accepts_a_correct_custom_model(small_eval_batches):
    from pytest_fa.core.report import diagnose

    torch.manual_seed(0)
    report = diagnose(GoodModel(), small_eval_batches)
    assert len(report.layers) == 3
    assert all(report.diagnostics[k].evaluated for k in "abc")


def test_diagnose_refuses_detached_hidden_states(small_eval_batches):
    from pytest_fa.core.report import diagnose

    torch.manual_seed(0)
    with pytest.raises(ModelInterfaceError) as info:
        diagnose(DetachedHiddens(), small_eval_batches)
    assert "detached" in str(info.value) and ".detach()" in str(info.value)


def test_diagnose_refuses_hidden_states_off_the_forward_path(small_eval_batches):
    from pytest_fa.core.report import diagnose

    torch.manual_seed(0)
    with pytest.raises(ModelInterfaceError, match="not on the path"):
        diagnose(CopiedHiddens(), small_eval_batches)
