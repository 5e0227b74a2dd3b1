"""Summary statistics over seeds, shared by studies (``compare``) and paper reproductions."""
from __future__ import annotations

import math

import numpy as np


def mean_std(values: list[float], *, single: float | None = None) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of ``values``; the mean is None when there
    are none, the std is ``single`` when there are fewer than two."""
    mean = float(np.mean(values)) if values else None
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else single


def finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def paired_test(a: list[float], b: list[float]) -> tuple[float | None, float | None]:
    """Paired t statistic and two-sided p-value of ``a − b``; None where undefined."""
    if len(a) < 2:
        return None, None
    diffs = np.asarray(a) - np.asarray(b)
    if np.allclose(diffs, diffs[0]):  # zero spread: t is ±inf or undefined
        return None, (1.0 if np.allclose(diffs, 0) else None)
    from scipy.stats import ttest_rel

    result = ttest_rel(a, b)
    return finite(result.statistic), finite(result.pvalue)
