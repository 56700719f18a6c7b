"""Training methods and the registry that rebuilds them from a bundle. A method owns the loss whose gradient is
its update, the auxiliary state it needs (saved with every checkpoint) and the credit signal ``a_l`` that
per-layer Γ compares with backprop. Register your own with :func:`register`.
"""

from __future__ import annotations

from typing import Any

from pytest_fa.errors import CheckpointError, setting
from pytest_fa.training.methods.base import (
    LocalCreditMethod, Method, MethodState, credit_loss, feature_dims, hidden_states, local_forward, scale_penalty,
)
from pytest_fa.training.methods.bridges import CreditBridge, StateBridge
from pytest_fa.training.methods.backprop import Backprop, FrozenBlocks
from pytest_fa.training.methods.equilibrium import EquilibriumPropagation
from pytest_fa.training.methods.feedback import DFA, FA

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Backprop, FrozenBlocks, DFA, FA, EquilibriumPropagation, StateBridge, CreditBridge)
}


def register(cls: type[Method]) -> type[Method]:
    """Make a :class:`Method` subclass known by its ``name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError("a method needs a non-empty class attribute `name`")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **config: Any) -> Method:
    """Instantiate a registered method by name with its recorded config."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise CheckpointError(
            f"unknown method {name!r}; pytest-fa knows {', '.join(sorted(METHODS))}. Register "
            f"your own with pytest_fa.training.methods.register, or pass {setting('credit')} for its credit signal"
        ) from None
    try:
        return cls(**config)
    except TypeError as exc:
        raise CheckpointError(f"method {name!r} does not take config {config!r}: {exc}") from None


__all__ = [
    "METHODS", "Backprop", "CreditBridge", "DFA", "EquilibriumPropagation", "FA", "FrozenBlocks",
    "LocalCreditMethod", "Method", "MethodState", "StateBridge", "credit_loss", "feature_dims",
    "get_method", "hidden_states", "local_forward", "register", "scale_penalty",
]
