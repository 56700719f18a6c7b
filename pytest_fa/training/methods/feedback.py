"""Fixed random feedback: direct (DFA) and sequential (FA)."""

from __future__ import annotations

from pytest_fa.core.credit import (
    DFACredit, FACredit, check_dfa_feedback, check_feedback, expected_fa_shapes, init_dfa_feedback, init_fa_feedback,
)
from pytest_fa.training.methods.base import LocalCreditMethod, MethodState, feature_dims


class _FixedFeedback(LocalCreditMethod):
    """Credit by the fixed matrices ``signal`` reads, drawn by ``init`` at setup."""

    needs_feedback = True

    def setup(self, model, num_classes, input_shape, generator):
        device = next(model.parameters()).device
        feedback = self.init(num_classes, feature_dims(model, input_shape), generator)
        return MethodState(feedback=[b.to(device) for b in feedback])

    def training_credits(self, model, state, x, y, logits, outputs):
        return self.signal(state.feedback)(x, y, logits, outputs)

    def credit(self, model, state):
        return self.signal(state.feedback), ""


class DFA(_FixedFeedback):
    """Direct feedback alignment: ``a_l = e_T B_l``, one fixed ``B_l`` per hidden state."""

    name = "dfa"
    signal, init = DFACredit, staticmethod(init_dfa_feedback)

    def restore(self, model, state, num_classes, input_shape):
        state.feedback = check_dfa_feedback(state.feedback, num_classes, feature_dims(model, input_shape))
        return state


class FA(_FixedFeedback):
    """Feedback alignment: the output error travels down through fixed random ``B_l``."""

    name = "fa"
    signal, init = FACredit, staticmethod(init_fa_feedback)

    def restore(self, model, state, num_classes, input_shape):
        expected = expected_fa_shapes(num_classes, feature_dims(model, input_shape))
        state.feedback = check_feedback(state.feedback, expected, "((F_{l+1}, F_l) below the top, (classes, F_L) on top)")
        return state
