"""DFACredit and FACredit check their feedback matrices against the states of the first call:
a matrix that does not fit is named with its shape and the shape it needs, never a raw
matmul error from inside torch."""

from __future__ import annotations

import pytest
import torch

from pytest_fa.core.credit import DFACredit, FACredit, init_dfa_feedback, init_fa_feedback
from pytest_fa.errors import FeedbackError

BATCH, INPUTS, WIDTH, CLASSES, STATES = 6, 40, 32, 10, 4


def _call(credit, hiddens=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, INPUTS, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    logits = torch.randn(BATCH, CLASSES, generator=g)
    hiddens = hiddens or [torch.randn(BATCH, WIDTH, generator=g) for _ in range(STATES)]
    return credit(x, y, logits, hiddens)


def _biotorch_matrices():
    """One out × in matrix per Linear of a 40 → 32 → 32 → 32 → 10 MLP, as biotorch keeps them."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(out, inp, generator=g) for out, inp in ((WIDTH, INPUTS), (WIDTH, WIDTH), (WIDTH, WIDTH), (CLASSES, WIDTH))]


def _message(credit, hiddens=None) -> str:
    with pytest.raises(FeedbackError) as info:
        _call(credit, hiddens)
    return str(info.value)


def test_fitting_matrices_give_one_credit_per_state():
    g = torch.Generator().manual_seed(0)
    for credit in (DFACredit(init_dfa_feedback(CLASSES, [WIDTH] * STATES, g)),
                   FACredit(init_fa_feedback(CLASSES, [WIDTH] * STATES, g))):
        assert [tuple(a.shape) for a in _call(credit)] == [(BATCH, WIDTH)] * STATES


def test_per_linear_matrices_passed_to_dfa_credit_are_named_as_such():
    message = _message(DFACredit(_biotorch_matrices()))
    assert message.startswith("DFACredit: feedback matrix B_0 has shape (32, 40), expected (10, 32)")
    assert "(classes, d_l)" in message
    assert "one out × in matrix per Linear (biotorch style)" in message and "do not fit DFACredit" in message


def test_per_linear_matrices_passed_to_fa_credit_are_named_as_such():
    message = _message(FACredit(_biotorch_matrices()))
    assert message.startswith("FACredit: feedback matrix B_0 has shape (32, 40), expected (32, 32)")
    assert "(d_{l+1}, d_l)" in message and "(biotorch style)" in message and "do not fit FACredit" in message


def test_a_matrix_for_another_width_is_named_without_the_per_linear_hint():
    g = torch.Generator().manual_seed(0)
    feedback = init_dfa_feedback(CLASSES, [WIDTH] * STATES, g)
    feedback[2] = torch.randn(CLASSES, 2 * WIDTH, generator=g)
    message = _message(DFACredit(feedback))
    assert message.startswith("DFACredit: feedback matrix B_2 has shape (10, 64), expected (10, 32)")
    assert "biotorch" not in message


def test_a_count_that_does_not_match_the_states_is_named():
    g = torch.Generator().manual_seed(0)
    message = _message(DFACredit(init_dfa_feedback(CLASSES, [WIDTH] * (STATES + 1), g)))
    assert "DFACredit: expected 4 feedback matrices (one per hidden state h_0..h_L), found 5" in message


def test_token_and_flattened_states_are_read_as_the_protocol_reads_them():
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randn(BATCH, 5, WIDTH, generator=g) for _ in range(STATES)]
    assert len(_call(DFACredit(init_dfa_feedback(CLASSES, [WIDTH] * STATES, g)), tokens)) == STATES
    maps = [torch.randn(BATCH, 2, 4, 4, generator=g) for _ in range(STATES)]
    assert len(_call(DFACredit(init_dfa_feedback(CLASSES, [32] * STATES, g)), maps)) == STATES
    # a model that declares its (B, C, L) states spatial is read flattened: both readings fit
    sequences = [torch.randn(BATCH, 4, 8, generator=g) for _ in range(STATES)]
    assert len(_call(FACredit(init_fa_feedback(CLASSES, [32] * STATES, g)), sequences)) == STATES
