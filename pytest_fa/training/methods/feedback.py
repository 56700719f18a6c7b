"""Fixed random feedback: direct (DFA) and sequential (FA)."""

from __future__ import annotations

from pytest_fa.core.credit import (
    DFACredit,
    FACredit,
    check_dfa_feedback,
    check_feedback,
    expected_fa_shapes,
    init_dfa_feedback,
    init_fa_feedback,
)
from pytest_fa.training.methods.base import LocalCreditMethod, MethodState, feature_dims


class DFA(LocalCreditMethod):
    """Direct feedback alignment: ``a_l = e_T B_l``, one fixed ``B_l`` per hidden state."""

    name = "dfa"
    needs_feedback = True

    def setup(self, model, num_classes, input_shape, generator):
        device = next(model.parameters()).device
        feedback = init_dfa_feedback(num_classes, feature_dims(model, input_shape), generator)
        return MethodState(feedback=[b.to(device) for b in feedback])

    def training_credits(self, model, state, x, y, logits, outputs):
        return DFACredit(state.feedback)(x, y, logits, outputs)

    def credit(self, model, state):
        return DFACredit(state.feedback), ""

    def restore(self, model, state, num_classes, input_shape):
        state.feedback = check_dfa_feedback(state.feedback, num_classes, feature_dims(model, input_shape))
        return state


class FA(LocalCreditMethod):
    """Feedback alignment: the output error travels down through fixed random ``B_l``."""

    name = "fa"
    needs_feedback = True

    def setup(self, model, num_classes, input_shape, generator):
        device = next(model.parameters()).device
        feedback = init_fa_feedback(num_classes, feature_dims(model, input_shape), generator)
        return MethodState(feedback=[b.to(device) for b in feedback])

    def training_credits(self, model, state, x, y, logits, outputs):
        return FACredit(state.feedback)(x, y, logits, outputs)

    def credit(self, model, state):
        return FACredit(state.feedback), ""

    def restore(self, model, state, num_classes, input_shape):
        expected = expected_fa_shapes(num_classes, feature_dims(model, input_shape))
        state.feedback = check_feedback(state.feedback, expected, "((F_{l+1}, F_l) below the top, (classes, F_L) on top)")
        return state
