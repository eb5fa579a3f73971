"""The statistics ``gatekit compare`` reports on final losses: the best quartile, Welch's
t-test against a baseline variant with Holm's correction for testing several variants, and the
share of the variance of the loss that each hyperparameter explains.

The variance share is a first-order, functional-ANOVA-style marginal (Hooker 2007; Hutter et
al. 2014 as Greff et al. 2017 use it), estimated from the trials themselves rather than from a
model fitted to them: the values a factor took are put into at most ``bins`` bins of about
equal counts (by default 5, fewer for fewer than 20 runs: at least 4 runs a bin, and at least
2 bins; a factor with that many distinct values or fewer: one bin per value), and its
share is the variance of the bin means of the loss, weighted by the bins' counts, over the
total variance of the loss (the correlation ratio, eta squared). A factor that explains nothing
still gets about ``(k - 1) / (n - 1)`` by chance over n runs in k bins (the expected eta
squared of pure noise): :func:`variance_shares` returns that level too, so a share near it
means nothing.
"""
import numpy as np

__all__ = ["best_quartile", "holm", "variance_shares", "welch"]


def best_quartile(values):
    """The 25th percentile of ``values`` (a loss: the better quarter of the runs is below
    it), by NumPy's default linear interpolation; None without values."""
    values = [v for v in values if v is not None]
    return float(np.percentile(values, 25)) if values else None


def welch(sample, baseline):
    """Welch's t-test of two samples of final losses (``scipy.stats.ttest_ind`` with unequal
    variances, two-sided): ``(t, p)``, t < 0 when ``sample``'s mean is lower. ``(None, None)``
    when a sample has fewer than two values, or both have no spread (no test is possible)."""
    from scipy import stats

    sample = [v for v in sample if v is not None]
    baseline = [v for v in baseline if v is not None]
    if len(sample) < 2 or len(baseline) < 2 or (np.ptp(sample) == 0 and np.ptp(baseline) == 0):
        return None, None
    result = stats.ttest_ind(sample, baseline, equal_var=False)
    if not np.isfinite(result.pvalue):
        return None, None
    return float(result.statistic), float(result.pvalue)


def holm(p_values):
    """Holm's step-down adjustment of p-values that are tested together (a family): the k-th
    smallest of m is multiplied by ``m - k + 1``, kept at least as large as the one before it
    and at most 1. Rejecting where the adjusted p is below alpha keeps the chance of any false
    rejection in the family below alpha. None entries (no test) stay None and do not count."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted


def _bins(values, bins):
    """An integer bin per value: one per distinct value when there are at most ``bins`` of
    them, else ``bins`` bins of about equal counts by rank (equal values share a bin)."""
    values = np.asarray(values)
    distinct = np.unique(values)
    if len(distinct) <= bins:
        return np.searchsorted(distinct, values)
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def variance_shares(rows, factors, loss="loss", bins=None):
    """How much of the variance of ``row[loss]`` over ``rows`` each factor explains alone:
    ``({factor: share}, {factor: chance})``: each share in [0, 1] (see the module docstring),
    and the share that factor would get by chance if it explained nothing, ``(k - 1) / (n -
    1)`` for its k bins. A factor's values may be numbers or labels (such as variant names: one
    bin per label). Rows whose loss is None are left out; with fewer than two rows, or no
    spread in the loss, every share and chance is None."""
    rows = [row for row in rows if row[loss] is not None]
    y = np.array([row[loss] for row in rows], dtype=float)
    total = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    if len(y) < 2 or total == 0.0:
        return dict.fromkeys(factors), dict.fromkeys(factors)
    if bins is None:
        bins = max(2, min(5, len(y) // 4))
    shares, chances = {}, {}
    for factor in factors:
        values = [row[factor] for row in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            labels = _bins(values, bins)
        else:
            labels = np.unique([str(v) for v in values], return_inverse=True)[1]
        between = 0.0
        for label in np.unique(labels):
            group = y[labels == label]
            between += len(group) * (group.mean() - y.mean()) ** 2
        shares[factor] = float(between / total)
        chances[factor] = (len(np.unique(labels)) - 1) / (len(y) - 1)
    return shares, chances
