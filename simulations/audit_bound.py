"""Statistics of a one-run privacy audit (Steinke, Nasr and Jagielski, "Privacy Auditing with One
(1) Training Run", NeurIPS 2023, arXiv:2305.08846).

The game: m canaries are each put into the training data independently with probability 1/2; after
one training run the auditor scores every canary, guesses "in" for the k+ highest scores and "out"
for the k- lowest, abstains on the rest, and counts the correct guesses. With r = k+ + k- guesses
and v of them correct, the paper's main theorem for approximate DP (Theorem 3 of the NeurIPS text;
cited as Corollary 5.4 of arXiv v1) says that if the training is (eps, delta)-DP with respect to
each canary, the number W of correct guesses satisfies, for every v,

    P[W >= v] <= p(eps, delta; v) := f(v) + 2 m delta * max_{1 <= i <= v} (f(v - i) - f(v)) / i,
    f(u) := P[Binomial(r, q) >= u],  q := e^eps / (1 + e^eps)

(terms with i > v are (1 - f(v)) / i, below the i = v one). For delta = 0 this is domination by
Binomial(r, q). ``p`` is the paper's Appendix D ``p_value_DP_audit``; the lower bound is where it
crosses beta (Appendix D's ``get_eps_audit``), here bisected to 1e-7 with the low end returned.

Validity, P[bound > true eps] <= beta: a bound B > 0 is only reported with p(B; v) < beta. A run
that is (eps*, delta)-DP is also (e, delta)-DP for every e >= eps*, so the inequality above holds
for each such e. Let R be the outcomes that would be reported above eps*, and u = min R: some
e >= eps* has p(e; u) < beta, so P[W in R] <= P[W >= u] <= p(e; u) < beta. No monotonicity of p
in eps or v is used. numpy/scipy only; every function here is pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special

__all__ = [
    "audit", "audit_ceiling", "clopper_pearson", "distinguishing_bound", "distinguishing_ceiling",
    "epsilon_lower_bound", "guesses", "p_value",
]

DEFAULT_FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)
_EPS_CAP = 64.0  # q = expit(64) is 1.0 in float64: no larger eps can be told apart numerically
_EPS_TOL = 1e-7


def _check_counts(r: int, v: int, m: int) -> None:
    for name, value in (("r", r), ("v", v), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if m < 1:
        raise ValueError(f"m (the number of canaries) must be at least 1, got {m}")
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")


def _check_delta_beta(delta: float, beta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating, np.integer)):
        raise ValueError(f"delta must be a number, got {delta!r}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
        raise ValueError(f"beta must be a number, got {beta!r}")
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta!r}")


def _binom_pmf(k: np.ndarray, n: int, q: float) -> np.ndarray:
    """Binomial(n, q) pmf at integer k in [0, n], via log-gamma (scipy.special ufuncs are ~100x
    faster than scipy.stats.binom here; xlogy/xlog1py make q = 0 or 1 exact)."""
    log_pmf = (
        special.gammaln(n + 1)
        - special.gammaln(k + 1)
        - special.gammaln(n - k + 1)
        + special.xlogy(k, q)
        + special.xlog1py(n - k, -q)
    )
    return np.exp(log_pmf)


def _p_value(r: int, v: int, m: int, eps: float, delta: float) -> float:
    """p(eps, delta; v) from the module docstring, without input checks."""
    if v == 0:
        return 1.0
    q = float(special.expit(eps))
    tail = float(special.bdtrc(v - 1, r, q))  # f(v) = P[Bin(r, q) >= v] = P[Bin(r, q) > v - 1]
    if delta == 0:
        return min(tail, 1.0)
    # (f(v - i) - f(v)) / i = P[v - i <= Bin(r, q) <= v - 1] / i for i = 1..v; summed pmfs keep it
    # non-negative and exact where a difference of two tails would cancel.
    pmf_down = _binom_pmf(np.arange(v - 1, -1, -1, dtype=float), r, q)  # pmf(v-1), ..., pmf(0)
    alpha = float(np.max(np.cumsum(pmf_down) / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


def p_value(r: int, v: int, m: int, eps: float, delta: float) -> float:
    """Upper bound on P[v or more correct of r guesses] under (eps, delta)-DP (Theorem 3)."""
    _check_counts(r, v, m)
    _check_delta_beta(delta, 0.5)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return _p_value(r, v, m, float(eps), float(delta))


def epsilon_lower_bound(r: int, v: int, m: int, delta: float, beta: float = 0.05) -> float:
    """The eps lower bound certified with confidence 1 - beta by v correct of r guesses, m canaries.

    Steinke-Nasr-Jagielski Theorem 3 (approximate DP; Appendix D's ``get_eps_audit``): the
    largest eps found with p(eps, delta; v) < beta, i.e. the training is, with confidence
    1 - beta, not (eps', delta)-DP for any eps' below the returned value. 0.0 when even eps = 0
    is not rejected (the observation is consistent with no leakage). Bisection keeps the invariant
    p(lo) < beta <= p(hi) and returns lo, so rounding errs low.
    """
    _check_counts(r, v, m)
    _check_delta_beta(delta, beta)
    delta, beta = float(delta), float(beta)
    # p >= f(v), and f(v) grows with eps: if eps = 0 survives without delta, nothing is rejected
    if r == 0 or v == 0 or _p_value(r, v, m, 0.0, 0.0) >= beta:
        return 0.0
    if _p_value(r, v, m, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while _p_value(r, v, m, hi, delta) < beta:
        lo, hi = hi, 2.0 * hi
        if hi > _EPS_CAP:  # not reached for v <= r: q -> 1 makes f(v) -> 1
            return lo
    while hi - lo > _EPS_TOL:
        mid = 0.5 * (lo + hi)
        if _p_value(r, v, m, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def guesses(scores: np.ndarray, k_plus: int, k_minus: int) -> np.ndarray:
    """+1 for the k_plus highest scores, -1 for the k_minus lowest, 0 (abstain) elsewhere.

    Ties are broken by position (among equal scores the later index ranks higher), so the guesses
    depend on the scores alone, as the theorem requires of a post-processing of the run's output.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {scores.shape}")
    if scores.dtype == bool or not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"scores must be numeric, got dtype {scores.dtype}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    for name, k in (("k_plus", k_plus), ("k_minus", k_minus)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"{name} must be a non-negative int, got {k!r}")
    m = scores.shape[0]
    if k_plus + k_minus > m:
        raise ValueError(f"k_plus + k_minus = {k_plus + k_minus} exceeds the {m} canaries")
    order = np.argsort(scores, kind="stable")  # ascending; equal scores keep index order
    out = np.zeros(m, dtype=np.int8)
    out[order[:k_minus]] = -1
    if k_plus:
        out[order[m - k_plus :]] = 1
    return out


def audit(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    beta: float = 0.05,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict:
    """One-run audit: the best eps lower bound over guess fractions, Bonferroni-corrected.

    For each fraction, k+ = k- = floor(fraction * m / 2) guesses each way; each option is
    tested at beta / len(fractions) (Steinke-Nasr-Jagielski Theorem 3 per option, union bound
    over options), so the reported maximum holds with confidence 1 - beta. Options with no
    guesses still count in the correction. ``scores``: higher = more likely included;
    ``included``: the true, boolean inclusion of each canary (each in w.p. 1/2 by design).
    """
    scores = np.asarray(scores)
    included = np.asarray(included)
    if scores.ndim != 1 or included.ndim != 1:
        raise ValueError(
            f"scores and included must be one-dimensional, got shapes {scores.shape} "
            f"and {included.shape}"
        )
    if scores.shape != included.shape:
        raise ValueError(
            f"scores and included differ in length: {scores.shape[0]} != {included.shape[0]}"
        )
    if included.dtype != bool:
        raise ValueError(f"included must be a boolean array, got dtype {included.dtype}")
    m = int(scores.shape[0])
    if m == 0:
        raise ValueError("no canaries: m = 0")
    _check_delta_beta(delta, beta)
    fractions = tuple(fractions)
    if not fractions:
        raise ValueError("fractions is empty")
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float, np.floating)) or not 0 < f <= 1:
            raise ValueError(f"each fraction must be in (0, 1], got {f!r}")
    level = beta / len(fractions)
    truth = np.where(included, 1, -1)
    best = {"eps_lower_bound": 0.0, "r": 0, "v": 0, "fraction": None}
    for f in fractions:
        k = int(math.floor(f * m / 2))
        if k == 0:
            continue
        g = guesses(scores, k, k)
        r = int(np.count_nonzero(g))
        v = int(np.count_nonzero(g == truth))
        eps = epsilon_lower_bound(r, v, m, delta, level)
        if best["fraction"] is None or eps > best["eps_lower_bound"]:
            best = {"eps_lower_bound": eps, "r": r, "v": v, "fraction": f}
    return {**best, "m": m, "beta": float(beta), "delta": float(delta)}


def audit_ceiling(
    m: int, delta: float, beta: float = 0.05, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> float:
    """The largest bound :func:`audit` can certify with ``m`` canaries: every guess correct.

    A claimed eps above it cannot be refuted by this audit, whatever the run leaks ("no power").
    """
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m (the number of canaries) must be a positive int, got {m!r}")
    _check_delta_beta(delta, beta)
    fractions = tuple(fractions)
    if not fractions:
        raise ValueError("fractions is empty")
    level = beta / len(fractions)
    best = 0.0
    for f in fractions:
        r = 2 * int(math.floor(f * m / 2))
        if r:
            best = max(best, epsilon_lower_bound(r, r, int(m), float(delta), level))
    return best


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided 1 - alpha interval of a binomial proportion, k of n."""
    _check_counts(n, k, max(n, 1))
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if k == 0 else float(special.betaincinv(k, n - k + 1, alpha / 2))
    hi = 1.0 if k == n else float(special.betaincinv(k + 1, n - k, 1 - alpha / 2))
    return lo, hi


def distinguishing_bound(true_positives: int, positives: int, false_positives: int, negatives: int,
                         delta: float, beta: float = 0.05) -> float:
    """eps lower bound at confidence 1 - beta from one test's (TPR, FPR) over independent runs.

    An (eps, delta)-DP release makes every test satisfy TPR <= e^eps FPR + delta; with TPR_lo and
    FPR_hi one-sided 1 - beta/2 Clopper-Pearson limits (union bound: both hold w.p. 1 - beta),
    eps >= log((TPR_lo - delta) / FPR_hi). 0.0 when that is not positive.
    """
    _check_delta_beta(delta, beta)
    tpr_lo = clopper_pearson(true_positives, positives, beta)[0]
    fpr_hi = clopper_pearson(false_positives, negatives, beta)[1]
    if tpr_lo <= delta or fpr_hi <= 0:
        return 0.0
    return max(0.0, math.log((tpr_lo - delta) / fpr_hi))


def distinguishing_ceiling(runs: int, delta: float, beta: float = 0.05) -> float:
    """The largest bound :func:`distinguishing_bound` can give with ``runs`` runs each way: a
    perfect test (every positive found, no false positive)."""
    return distinguishing_bound(runs, runs, 0, runs, delta, beta)
