"""Errors raised on bad input. Each message says what is wrong and what to do."""

from __future__ import annotations

import re


class FAError(Exception):
    """Base class: the input cannot be diagnosed honestly."""


class DataError(FAError):
    """A data set is missing, malformed or too small for the diagnostics."""


class CheckpointError(FAError):
    """A checkpoint file is missing, unsafe, corrupt or inconsistent."""


class ModelInterfaceError(FAError):
    """A model does not expose the duck-typed interface the protocol needs."""


class CreditSignalError(ModelInterfaceError):
    """A credit signal raised, or returned something other than one ``a_l`` (or None) per state."""


class FeedbackError(CheckpointError):
    """Feedback matrices are missing, of the wrong shape or transposed."""


class NonFiniteError(FAError):
    """NaN or Inf in weights, hidden states or gradients."""


class NotBackpropError(FAError):
    """Autograd on the model is not backprop (its method's backward), so it cannot be the reference."""


class FABudgetWarning(UserWarning):
    """(d)'s frozen-blocks control may be trained less than the model, which inflates (d)'s margin."""


class FACacheWarning(UserWarning):
    """The cache folder cannot be written: its entries are still read, new ones go to a temporary folder."""


# Library messages name a setting as "setting `name=VALUE`" (the Python API's spelling); the
# plugin rewrites each to its option, `--fa-name=VALUE`.
_SETTING = re.compile(r"setting `(\w+)((?:=[^`]*)?)`")


def setting(name: str, value: str = "") -> str:
    """How a message names a setting: ``setting `name=value```."""
    return f"setting `{name}{'=' + value if value else ''}`"


def as_flags(message: str, prefix: str = "--fa-") -> str:
    """``message`` with each named setting written as its option: ``--fa-name``, or ``--name`` for ``prefix="--"``."""
    return _SETTING.sub(lambda m: f"{prefix}{m.group(1).replace('_', '-')}{m.group(2)}", message)
