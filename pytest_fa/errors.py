"""Errors raised on bad input. Each message says what is wrong and what to do."""

from __future__ import annotations


class FAError(Exception):
    """Base class: the input cannot be diagnosed honestly."""


class DataError(FAError):
    """A data set is missing, malformed or too small for the diagnostics."""


class CheckpointError(FAError):
    """A checkpoint file is missing, unsafe, corrupt or inconsistent."""


class ModelInterfaceError(FAError):
    """A model does not expose the duck-typed interface the protocol needs."""


class FeedbackError(CheckpointError):
    """Feedback matrices are missing, of the wrong shape or transposed."""


class NonFiniteError(FAError):
    """NaN or Inf in weights, hidden states or gradients."""
