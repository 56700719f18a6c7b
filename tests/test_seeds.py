"""Seed statistics: mean ± sample sd over the defined values, and which reports group together."""

from __future__ import annotations

import math
import statistics

from hypothesis import given
from hypothesis import strategies as st

from pytest_fa.core.seeds import mean_sd, seed_groups

values = st.lists(st.one_of(st.none(), st.just(math.nan), st.floats(-1e6, 1e6)), max_size=12)


@given(values)
def test_mean_sd_is_over_the_defined_values_only(xs):
    defined = [x for x in xs if x is not None and not math.isnan(x)]
    mean, sd, n = mean_sd(xs)
    assert n == len(defined)
    if not defined:
        assert mean is None and sd is None
        return
    assert math.isclose(mean, statistics.fmean(defined), rel_tol=1e-9, abs_tol=1e-9)
    assert (sd is None) == (len(defined) < 2)
    if sd is not None:
        assert math.isclose(sd, statistics.stdev(defined), rel_tol=1e-9, abs_tol=1e-6)


class _Report:
    def __init__(self, configuration, seed):
        self.context = {"configuration": configuration, "seed": seed}


def test_only_two_or_more_seeds_of_one_recorded_configuration_form_a_group():
    a, b = '{"method": "dfa"}', '{"method": "bp"}'
    reports = [_Report(a, 1), _Report(a, 2), _Report(b, 1), _Report(b, 1), _Report(None, 3), _Report(None, 4)]
    (group,) = seed_groups(reports)
    assert group.configuration == {"method": "dfa"} and group.seeds == [1, 2]
