"""The noise-range error of a model states the limits in t, and the suggested times are accepted."""

from __future__ import annotations

import re

import numpy as np
import pytest

from entropy_probe.errors import SigmaRangeError
from entropy_probe.oracles import GaussianOracle
from entropy_probe.processes import from_spec


@pytest.mark.parametrize("spec", ["vp", "sl:sigma0=0.1", "ve"])
def test_suggested_times_pass_the_check(spec):
    process = from_spec(spec)
    model = GaussianOracle(np.zeros(2), np.ones(2))
    model.sigma_min = float(process.sigma_tilde(0.01))
    model.sigma_max = float(process.sigma_tilde(0.5))
    t_min, t_max = process.default_t_min, process.default_t_max

    with pytest.raises(SigmaRangeError) as error:
        model.check_time_range(process, t_min, t_max)
    message = str(error.value)
    assert f"t from {t_min:.4g} to {t_max:.4g}" in message
    assert "σ/α from" in message

    suggested_min = float(re.search(r"--t-min (\S+) or larger", message).group(1))
    suggested_max = float(re.search(r"--t-max (\S+) or smaller", message).group(1))
    assert suggested_min == pytest.approx(0.01, rel=0.01)
    assert suggested_max == pytest.approx(0.5, rel=0.01)
    model.check_time_range(process, suggested_min, suggested_max)
