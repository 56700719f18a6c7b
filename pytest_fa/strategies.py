"""Hypothesis strategies for tensors the way local-credit evaluations meet them, e.g.
``@given(fst.credit_and_reference())`` with ``from pytest_fa import strategies as fst``.

Every tensor is drawn from a seeded ``torch.Generator`` (so hypothesis can shrink the
seed) and scaled by a log-uniform factor chosen inside the range the dtype represents:
float32/float64/bfloat16 span 1e-30 … 1e8, float16 its normal range 1e-4 … 1e4.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SCALE_RANGE = {torch.float64: (-30, 8), torch.float32: (-30, 8), torch.bfloat16: (-30, 8), torch.float16: (-4, 4)}


def dtypes(include_float16: bool = True) -> st.SearchStrategy[torch.dtype]:
    """float32, float64, bfloat16 and (optionally) float16."""
    return st.sampled_from(FLOAT_DTYPES if include_float16 else FLOAT_DTYPES[:3])


def seeds() -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=2**31 - 1)


def norm_scales(dtype: torch.dtype = torch.float32) -> st.SearchStrategy[float]:
    """Log-uniform positive scales inside the range ``dtype`` represents."""
    low, high = SCALE_RANGE[dtype]
    return st.builds(
        lambda exponent, mantissa: mantissa * 10.0**exponent,
        st.integers(min_value=low, max_value=high - 1),
        st.floats(min_value=1.0, max_value=9.99),
    )


def _draw_rows(draw, shape, dtype) -> torch.Tensor:
    seed, scale = draw(seeds()), draw(norm_scales(dtype))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x * scale).to(dtype)


@st.composite
def per_sample_rows(draw, batch_sizes: st.SearchStrategy[int] = st.integers(min_value=1, max_value=64),
                    features: st.SearchStrategy[int] = st.integers(min_value=2, max_value=64),
                    dtype: st.SearchStrategy[torch.dtype] | None = None) -> torch.Tensor:
    """A ``(B, F)`` tensor of per-sample rows at a random scale and dtype."""
    dt = draw(dtype or dtypes())
    return _draw_rows(draw, (draw(batch_sizes), draw(features)), dt)


@st.composite
def credit_and_reference(draw, batch_sizes: st.SearchStrategy[int] = st.integers(min_value=1, max_value=64),
                         features: st.SearchStrategy[int] = st.integers(min_value=2, max_value=64),
                         dtype: st.SearchStrategy[torch.dtype] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, g)``: a credit and a reference gradient of one shape and dtype, at independent scales."""
    dt = draw(dtype or dtypes())
    shape = (draw(batch_sizes), draw(features))
    return _draw_rows(draw, shape, dt), _draw_rows(draw, shape, dt)


@st.composite
def hidden_stacks(draw, depths: st.SearchStrategy[int] = st.integers(min_value=1, max_value=8),
                  batch_sizes: st.SearchStrategy[int] = st.integers(min_value=1, max_value=32),
                  features: st.SearchStrategy[int] = st.integers(min_value=2, max_value=32),
                  dtype: st.SearchStrategy[torch.dtype] | None = None) -> list[torch.Tensor]:
    """``[h_0, ..., h_L]`` of one shape whose per-layer scales wander across the dtype's range."""
    dt = draw(dtype or dtypes(include_float16=False))
    depth, shape = draw(depths), (draw(batch_sizes), draw(features))
    return [_draw_rows(draw, shape, dt) for _ in range(depth + 1)]


@st.composite
def batch_partitions(draw, total: int, min_size: int = 1) -> list[int]:
    """Sizes of consecutive batches that split ``total`` samples (at least ``min_size`` each)."""
    sizes: list[int] = []
    left = total
    while left > 0:
        if left < 2 * min_size:
            sizes.append(left)
            break
        size = draw(st.integers(min_value=min_size, max_value=left))
        if left - size and left - size < min_size:
            size = left
        sizes.append(size)
        left -= size
    return sizes


def eval_batch_sizes() -> st.SearchStrategy[int]:
    """Eval batch sizes a paper might use: 1 … 4096, with the common powers of two favoured."""
    return st.one_of(st.sampled_from([32, 64, 128, 256, 512, 1024]), st.integers(min_value=1, max_value=4096))
