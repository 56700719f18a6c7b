"""Checkpoint bundles: one file with everything a diagnosis needs (the fields of :class:`Bundle`),
a plain dict of strings, numbers, lists and tensors that ``torch.load(path, weights_only=True)``
reads without running code.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pytest_fa.core.files import write_atomically
from pytest_fa.core.reference import CreditSignal
from pytest_fa.errors import CheckpointError, FeedbackError, setting
from pytest_fa.models import build_model, load_weights
from pytest_fa.training.methods import METHODS, MethodState, get_method

_RESAVE = (
    "Re-save only tensors and plain values: a pytest-fa bundle "
    "(pytest_fa.training.checkpoint.save_bundle) or torch.save(model.state_dict(), path)"
)
_RESAVE_BUNDLE = "Re-save the bundle with pytest_fa.training.checkpoint.save_bundle"
FORMAT = "pytest-fa.bundle"
FORMAT_VERSION = 1


@dataclass
class Bundle:
    """The contents of a checkpoint bundle; ``feedback``: the training ``B_l``, one per hidden state;
    ``aux``: the auxiliary nets' state dicts, by name; ``data``: the data spec."""

    arch: str
    arch_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    method: str
    data: dict[str, Any]
    method_config: dict[str, Any] = field(default_factory=dict)
    feedback: list[torch.Tensor] = field(default_factory=list)
    aux: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    seed: int | None = None
    epochs: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def headline_acc(self) -> float | None:
        return self.metrics.get("test_acc")

    def to_payload(self) -> dict[str, Any]:
        fields_ = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **fields_, "feedback": list(self.feedback)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], source: str = "bundle") -> Bundle:
        version = payload.get("format_version")
        if isinstance(version, bool) or not isinstance(version, (int, type(None))):
            raise _refused(source, f"format_version={version!r} (a {type(version).__name__})",
                           f"the format version must be the integer {FORMAT_VERSION}")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{source} has bundle format version {version!r}; this pytest-fa reads version "
                                  f"{FORMAT_VERSION}. Upgrade pytest-fa or re-save the bundle")
        required = ("arch", "state_dict", "method", "data")
        missing = [k for k in required if k not in payload]
        if missing:
            raise CheckpointError(f"{source} is a pytest-fa bundle without {missing}; re-save it with "
                                  "pytest_fa.training.checkpoint.save_bundle")
        _check_types(payload, source)
        _check_record(payload, source)
        records = {k: dict(payload.get(k) or {}) for k in ("arch_config", "method_config", "aux", "recipe", "metrics")}
        return cls(
            **{k: payload[k] for k in required}, **records, feedback=list(payload.get("feedback") or []),
            seed=payload.get("seed"), epochs=payload.get("epochs"),
        )


def _check_types(payload: dict[str, Any], source: str) -> None:
    """Each field has the type :func:`save_bundle` writes: names are strings, records dicts with
    string keys at every level (the data spec all JSON), feedback a list, the seed one torch takes."""
    for name in ("arch", "method"):
        if not isinstance(payload[name], str):
            raise _refused(source, f"{name}={payload[name]!r}", f"{name} is a name (a string)")
    for name in ("arch_config", "method_config", "data", "recipe", "aux"):
        value = payload.get(name)
        if value is None and name != "data":
            continue
        if not isinstance(value, dict):
            raise _refused(source, f"{name} of type {type(value).__name__}", f"{name} is a dict")
        found = _not_json(value, keys_only=name != "data")
        if found is not None:
            holds = "JSON (dicts with string keys, lists, strings, numbers)" if name == "data" else "string keys"
            raise _refused(source, f"{name} with the {found[0]} {found[1]!r}", f"{name} holds {holds}")
    feedback = payload.get("feedback")
    if feedback is not None and not isinstance(feedback, (list, tuple)):
        raise _refused(source, f"feedback of type {type(feedback).__name__}",
                       "feedback is a list of tensors, one per hidden state")
    for index, b in enumerate(feedback or ()):
        if isinstance(b, torch.Tensor) and b.is_complex():
            raise FeedbackError(
                f"{source}: feedback matrix B_{index} is complex ({b.dtype}); feedback matrices are real. "
                f"{_RESAVE_BUNDLE}"
            )
    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64 - 1):
        raise _refused(source, f"seed={seed!r}", "a seed is a whole number torch can seed with, in [-2**63, 2**64 - 1)")


def _refused(source: str, what: str, rule: str) -> CheckpointError:
    """The error for a bundle field of the wrong type: what ``source`` records and the rule it breaks."""
    return CheckpointError(f"{source} records {what}; {rule}. {_RESAVE_BUNDLE}")


def _not_json(value: Any, keys_only: bool) -> tuple[str, Any] | None:
    """``("key", k)`` for the first dict key in ``value`` that is not a string, or (unless
    ``keys_only``) ``("value", v)`` for the first value that is no JSON value; else None."""
    if isinstance(value, dict):
        found = (("key", key) if not isinstance(key, str) else _not_json(item, keys_only)
                 for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        found = (_not_json(item, keys_only) for item in value)
    else:
        return None if keys_only or isinstance(value, (str, int, float, bool, type(None))) else ("value", value)
    return next((f for f in found if f is not None), None)


def _check_record(payload: dict[str, Any], source: str) -> None:
    """The recorded budget and accuracy feed (d): budgets are whole numbers ≥ 1 with
    ``epochs`` ≤ ``metrics.planned_epochs``, the accuracy a fraction."""
    metrics = payload.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise _refused(source, f"metrics of type {type(metrics).__name__}",
                       "metrics is a dict (test_acc, planned_epochs, history)")
    epochs = payload.get("epochs")
    planned = metrics.get("planned_epochs")
    for name, value in (("epochs", epochs), ("metrics.planned_epochs", planned)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CheckpointError(f"{source} records {name}={value!r}; a training budget is a whole number ≥ 1")
    if epochs is not None and planned is not None and epochs > planned:
        raise CheckpointError(
            f"{source} records epochs={epochs} but metrics.planned_epochs={planned}: a run cannot train "
            "more epochs than it planned, so the frozen baseline's budget cannot be matched. Re-save "
            "the bundle with the epochs it trained and the schedule it planned"
        )
    acc = metrics.get("test_acc")
    if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1):  # NaN too
        raise CheckpointError(f"{source} records test_acc={acc!r}; an accuracy is a fraction in [0, 1]. Re-save the "
                              "bundle with the measured accuracy")


def save_bundle(path: str | os.PathLike, bundle: Bundle) -> Path:
    """Write ``bundle`` atomically; refuse contents that ``weights_only`` loading cannot read."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(bundle.to_payload(), buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"the bundle holds an object that weights_only loading refuses ({exc}); store only "
                              "tensors, numbers, strings, lists and dicts") from exc
    write_atomically(path, buffer.getvalue())
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with every failure turned into a clear error."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; point at the .pt file")
    if not path.is_file():  # opening a pipe blocks until something writes to it
        raise CheckpointError(
            f"checkpoint {path} is not a regular file (a pipe, socket or device); point at the .pt file"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "global" in str(exc):
            raise CheckpointError(
                f"{path} needs arbitrary code to load (an unsafe pickle), so pytest-fa refuses it. {_RESAVE}"
            ) from exc
        raise CheckpointError(
            f"{path} is not a checkpoint pytest-fa can read safely ({_torch_reason(exc)}): the file is "
            "corrupt or truncated, not a torch checkpoint at all, or a pickle that needs arbitrary code "
            f"to load (unsafe), which pytest-fa refuses. {_RESAVE}"
        ) from exc
    except Exception as exc:  # torch raises many types on a damaged file
        raise CheckpointError(f"{path} is not a checkpoint pytest-fa can read safely ({_torch_reason(exc)}): "
                              "the file is corrupt or truncated, or not a torch checkpoint at all") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}; expected a pytest-fa bundle or a state dict")
    return payload


def _torch_reason(exc: Exception) -> str:
    """What ``torch.load`` says is wrong, without its advice to load with ``weights_only=False``
    (which runs the file's code: never for a file pytest-fa refused)."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.DOTALL)
    if found and found.group(1).strip():
        return f"{type(exc).__name__}: {found.group(1).strip()}"
    kept = [s for s in re.split(r"(?<=[.:])\s+", text)
            if s and not re.search(r"weights_only|arbitrary code|trusted source|file an issue|documentation", s)]
    return f"{type(exc).__name__}: {' '.join(kept)}" if kept else type(exc).__name__


def is_bundle(payload: dict[str, Any]) -> bool:
    return payload.get("format") == FORMAT


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read a pytest-fa bundle; a plain state dict is an error here."""
    payload = read_checkpoint(path)
    if not is_bundle(payload):
        raise CheckpointError(f"{path} is not a pytest-fa bundle (no 'format' key); for a plain state dict pass "
                              f"{setting('model', 'package.module:build')} so pytest-fa can construct the model")
    return Bundle.from_payload(payload, source=str(path))


def import_factory(spec: str, name: str = "model", root: str | os.PathLike | None = None) -> Callable[..., Any]:
    """Resolve ``package.module:callable``, the value of setting ``name``; a module not on
    ``sys.path`` is looked up in ``root`` (pytest's rootdir) for that import only."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        example = "package.module:build" if name == "model" else f"package.module:make_{name}"
        raise CheckpointError(f"{setting(name, repr(spec))} must look like {example} (module path, colon, callable)")
    try:
        module = _import(module_name, root)
    except ModuleNotFoundError as exc:
        if not _missing(exc, module_name):
            raise CheckpointError(f"{setting(name)}: importing {module_name!r} failed inside it: {exc}") from exc
        where = "on sys.path" + (f" and in {root}" if root is not None else "")
        raise CheckpointError(
            f"{setting(name)}: cannot import {module_name!r} ({exc}); it was looked for {where}. Add the "
            "folder that holds it to pytest's `pythonpath` ini key (e.g. `pythonpath = .` or `pythonpath = src`) "
            "or to PYTHONPATH, or install the package"
        ) from exc
    except ImportError as exc:
        raise CheckpointError(f"{setting(name)}: cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 — a relative name, or the module's own code raised
        raise CheckpointError(
            f"{setting(name)}: importing {module_name!r} raised {type(exc).__name__}: {exc} (give an absolute "
            "module path, package.module)"
        ) from exc
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise CheckpointError(f"{setting(name)}: module {module_name!r} has no {attr!r}") from None
    if not callable(factory):
        raise CheckpointError(f"{setting(name)}: {spec} is not callable")
    return factory


def _missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """Whether ``exc`` says ``module_name`` (or a package above it) is missing, not a module it imports."""
    return exc.name is not None and (module_name + ".").startswith(exc.name + ".")


def _import(module_name: str, root: str | os.PathLike | None):
    """``importlib.import_module``; on a missing top-level module, again with ``root`` first on sys.path."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        folder = None if root is None else str(root)
        if folder is None or folder in sys.path or not _missing(exc, module_name):
            raise
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(folder)


@dataclass
class LoadedCheckpoint:
    """A model ready for diagnosis, with what is known about how it was trained."""

    path: str
    model: nn.Module
    bundle: Bundle | None
    state: MethodState
    method: str | None

    @property
    def label(self) -> str:
        return Path(self.path).name


class CreditFactory(Protocol):
    """``make_credit(model, checkpoint) -> credit``, named by the ``credit`` setting and each
    ``credit_map`` line, called once per checkpoint: ``model`` as diagnosed (a ``HookedModel`` under
    ``hidden``), ``checkpoint`` the :class:`LoadedCheckpoint`; ``credit(x, y, logits, hiddens)``
    returns ``[a_0, …, a_L]``, one ``(B, F_l)`` row (or None) per state."""

    def __call__(self, model: nn.Module, checkpoint: LoadedCheckpoint) -> CreditSignal: ...


def load_checkpoint(path: str | os.PathLike, factory: str | Callable[..., nn.Module] | None = None, input_shape=None,
                    num_classes: int | None = None, allow_unknown_method: bool = False,
                    adapt: Callable[[nn.Module], nn.Module] | None = None,
                    contents: dict[str, Any] | Bundle | None = None) -> LoadedCheckpoint:
    """Load a bundle or, with ``factory``, a plain state dict, and validate both fully. ``input_shape``/
    ``num_classes`` (of the data) serve where the arch_config lacks them; ``allow_unknown_method`` accepts a
    method pytest-fa does not know (the caller gives its credit); ``adapt`` wraps the model once its weights
    are in; ``contents``: what the file holds, when read already (:func:`read_checkpoint`, or its :class:`Bundle`)."""
    source = str(path)
    contents = read_checkpoint(path) if contents is None else contents
    make = import_factory(factory) if isinstance(factory, str) else factory
    if not isinstance(contents, Bundle) and not is_bundle(contents):
        if make is None:
            raise CheckpointError(f"{source} is a plain state dict; pytest-fa needs the architecture to rebuild it: "
                                  f"pass {setting('model', 'package.module:build')} (a callable returning the "
                                  "untrained model)")
        model = load_weights(_call_factory(make, {}, source), contents, source)
        return LoadedCheckpoint(source, adapt(model) if adapt else model, None, MethodState(), None)

    bundle = contents if isinstance(contents, Bundle) else Bundle.from_payload(contents, source)
    if make is not None:
        model = _call_factory(make, bundle.arch_config, source)
    elif bundle.arch == "custom":
        raise CheckpointError(f"{source} holds a custom architecture; pass {setting('model', 'package.module:build')}")
    else:
        model = build_model(bundle.arch, **bundle.arch_config)
    load_weights(model, bundle.state_dict, source)
    model = adapt(model) if adapt else model
    cls = METHODS.get(bundle.method)
    if cls is not None:
        # a bundle written before a config key existed was trained with its earlier behaviour
        bundle.method_config = {**cls.recorded_defaults, **bundle.method_config}
    state = MethodState(feedback=bundle.feedback, config=bundle.method_config, aux_state=bundle.aux)
    if bundle.method not in METHODS and allow_unknown_method:
        return LoadedCheckpoint(source, model, bundle, state, bundle.method)
    method = get_method(bundle.method, **bundle.method_config)
    if method.needs_feedback and not bundle.feedback:
        raise FeedbackError(f"{source}: method {bundle.method!r} trains with fixed feedback matrices but the "
                            "bundle carries none, so its credit cannot be rebuilt and any Γ would silently "
                            "fall back to cos(BP, BP) = 1. Re-save the bundle with the training B_l")
    shape = bundle.arch_config.get("input_shape") or input_shape
    classes = bundle.arch_config.get("num_classes") or num_classes
    if shape is None or classes is None:
        raise CheckpointError(f"{source}: neither the bundle's arch_config nor the caller gives input_shape and "
                              "num_classes, which the method's feedback matrices are checked against")
    state = method.restore(model, state, classes, shape)
    return LoadedCheckpoint(source, model, bundle, state, bundle.method)


def _call_factory(make: Callable[..., nn.Module], config: dict[str, Any], source: str) -> nn.Module:
    try:
        model = make(**config) if config else make()
    except TypeError as exc:
        raise CheckpointError(f"{source}: the model factory rejected config {config}: {exc}") from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 — the user's code: say whose error it is
        name = f"{getattr(make, '__module__', '?')}:{getattr(make, '__qualname__', type(make).__name__)}"
        raise CheckpointError(
            f"{source}: your model factory `{name}` ({setting('model')}) raised {type(exc).__name__}: {exc} "
            f"(called with config {config}); fix the factory so it returns the untrained model"
        ) from exc
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{source}: the model factory returned {type(model).__name__}, not an nn.Module")
    return model
