"""The project's ε (Opacus' PRV and RDP accountants, through ``epsilon_spent``) against an
independent numerical PLD accountant (``pld_reference``, numpy/scipy only, no DP library)."""

from functools import lru_cache

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import ndtr

from fedinterest.client.privacy import epsilon_spent
from pld_reference import epsilon_reference  # tests/ is on sys.path, like formats_fixtures

HISTORIES = [  # (history of (sigma, sample rate, steps) phases, delta)
    ([(0.937, 0.1, 100)], 1e-5),
    ([(1.555, 0.5, 20)], 1e-5),
    ([(1.902, 1.0, 10)], 1e-5),
    ([(0.735, 0.02, 1000)], 1e-5),
    ([(4.0, 1.0, 1), (1.0, 0.2, 50)], 1e-5),
    ([(0.937, 0.1, 100)], 1e-3),
]
IDS = [f"{'+'.join(f's{s}q{q}x{k}' for s, q, k in h)}-d{d:g}" for h, d in HISTORIES]


@lru_cache(maxsize=None)
def _reference(history: tuple, delta: float) -> float:
    return epsilon_reference(list(history), delta)


def _gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of the Gaussian mechanism (sensitivity 1), Balle & Wang 2018, Theorem 8."""
    def excess(eps: float) -> float:
        return ndtr(1 / (2 * sigma) - eps * sigma) - np.exp(eps) * ndtr(-1 / (2 * sigma) - eps * sigma) - delta
    return brentq(excess, 0.0, 100.0, xtol=1e-12)


@pytest.mark.parametrize("sigma,steps,delta", [(0.8, 1, 1e-5), (1.0, 1, 1e-5), (2.0, 1, 1e-3), (5.0, 1, 1e-6),
                                               (1.902, 10, 1e-5), (5.0, 10, 1e-5)])
def test_reference_matches_gaussian_closed_form(sigma, steps, delta):
    # q = 1: k steps of the Gaussian mechanism with noise σ are one step with σ/√k
    ref = epsilon_reference([(sigma, 1.0, steps)], delta)
    assert ref == pytest.approx(_gaussian_epsilon(sigma / np.sqrt(steps), delta), abs=1e-3)


def test_reference_grid_converged():
    # pessimistic rounding: a finer grid lowers ε slightly, and not by much
    history, delta = [(0.937, 0.1, 100)], 1e-5
    coarse, fine = epsilon_reference(history, delta), epsilon_reference(history, delta, h=2.5e-5)
    assert 0.0 <= coarse - fine <= 0.01


@pytest.mark.parametrize("history,delta", HISTORIES, ids=IDS)
def test_prv_matches_reference(history, delta):
    ref = _reference(tuple(history), delta)
    prv = epsilon_spent(history, delta, "prv")
    assert abs(prv - ref) <= max(0.05, 0.01 * ref), (prv, ref)
    # Opacus returns an upper bound on ε: it must not undercut the (pessimistic, ≤0.005 biased) reference
    assert prv >= ref - 0.02, (prv, ref)


@pytest.mark.parametrize("history,delta", HISTORIES, ids=IDS)
def test_rdp_is_looser_than_reference(history, delta):
    ref = _reference(tuple(history), delta)
    rdp = epsilon_spent(history, delta, "rdp")
    assert rdp >= ref, (rdp, ref)
    if history == [(0.937, 0.1, 100)] and delta == 1e-5:
        assert rdp - ref > 0.5, (rdp, ref)  # the slack that makes PRV worth offering
