"""The many-run release audit and the audits' ceilings: a broken selection is flagged, the product's pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedinterest.simulations.audit_bound import (audit, audit_ceiling, clopper_pearson, distinguishing_bound,
                                     distinguishing_ceiling)
from fedinterest.simulations.release_audit import audit_release, audited_shop, distinguish, verdict

RUNS = 20_000


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (7, 50), (1, 20_000), (19_990, 20_000)])
def test_clopper_pearson_matches_scipy(k, n):
    low, high = clopper_pearson(k, n, 0.05)
    reference = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert low == pytest.approx(reference.low, abs=1e-9) and high == pytest.approx(reference.high, abs=1e-9)


def test_clopper_pearson_known_values():
    """All n successes: the lower limit is (α/2)^(1/n); none: the upper one is 1 − (α/2)^(1/n)."""
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** 0.1) and clopper_pearson(10, 10)[1] == 1.0
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** 0.1) and clopper_pearson(0, 10)[0] == 0.0


def test_the_one_run_ceiling_is_the_bound_with_every_guess_correct_and_grows_with_canaries():
    rng = np.random.default_rng(0)
    for m, delta in ((200, 0.0), (1000, 0.0), (1000, 1e-5)):
        included = rng.random(m) < 0.5
        perfect = audit(included.astype(float) + rng.random(m) * 0.1, included, delta)["eps_lower_bound"]
        assert audit_ceiling(m, delta) == pytest.approx(perfect, abs=1e-6)
    ceilings = [audit_ceiling(m, 1e-5) for m in (100, 1000, 10_000)]
    assert ceilings == sorted(ceilings) and ceilings[0] < ceilings[-1]
    assert 4.6 < audit_ceiling(1000, 0.0) < 4.7  # the figure: ε = 8 can never be refuted with 1,000


def test_the_many_run_ceiling_is_a_perfect_test_and_grows_with_runs():
    assert distinguishing_ceiling(RUNS, 1e-5) == distinguishing_bound(RUNS, RUNS, 0, RUNS, 1e-5)
    assert distinguishing_ceiling(RUNS, 1e-5) == pytest.approx(math.log((0.025 ** (1 / RUNS) - 1e-5)
                                                                         / (1 - 0.025 ** (1 / RUNS))))
    assert distinguishing_ceiling(1000, 1e-5) < distinguishing_ceiling(RUNS, 1e-5) < distinguishing_ceiling(10**6, 0)


def test_verdicts():
    assert verdict(0.5, 1.0, 3.0) == "pass"
    assert verdict(1.5, 1.0, 3.0) == "VIOLATION"
    assert verdict(0.5, 8.0, 3.0) == "no power"
    assert verdict(4.0, 1.0, 9.0, product=False) == "flagged, as it should be"
    assert verdict(0.5, 1.0, 9.0, product=False) == "NOT flagged"
    assert verdict(0.5, 8.0, 7.0, product=False) == "NOT flagged (no power)"


def test_a_gaussian_release_at_its_claim_is_not_refuted_and_no_shift_gives_nothing():
    """The attack alone: releases calibrated to ε (at sensitivity 1) stay below it; equal means give ~0."""
    from fedinterest.client.privacy import PrivacyTerms
    from fedinterest.client.statistics import release_noise

    sigma = release_noise(1.0 / 0.5, 0.5, PrivacyTerms("user", 1e-5, "prv"))
    shifted = distinguish(np.array([1.0, 0.0]), np.zeros(2), sigma, RUNS, 1e-5, seed=1)
    assert 0 < shifted["eps_lower_bound"] <= 1.0 and shifted["shift"] == pytest.approx(1.0)
    same = distinguish(np.zeros(3), np.zeros(3), 1.0, RUNS, 1e-5, seed=2)
    assert same["eps_lower_bound"] < 0.3


@pytest.fixture(scope="module")
def shop(tiny_shop_table):
    return audited_shop(tiny_shop_table)


def test_the_broken_linspace_evaluation_is_flagged(shop):
    """The old shop-wide selection moves the release by many customers: the audit refutes its claim."""
    result = audit_release(shop, "broken-evaluation", 1.0, runs=RUNS, seed=11)
    assert result.attack["shift"] > 3.0
    assert result.lower_bound > result.claimed_epsilon and result.verdict == "flagged, as it should be"
    assert not result.failed and result.ceiling > result.lower_bound


@pytest.mark.parametrize("release", ["evaluation", "engagement", "label-flows"])
def test_the_product_releases_pass(shop, release):
    result = audit_release(shop, release, 1.0, runs=RUNS, seed=12)
    assert 0 < result.attack["shift"] <= 1.0 + 1e-9  # the worst customer moves it by at most the sensitivity
    assert result.lower_bound <= result.claimed_epsilon < result.ceiling
    assert result.verdict == "pass" and not result.failed
    assert result.accountant_epsilon == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
def test_the_broken_evaluation_at_the_products_charge_on_a_larger_shop(synthetic_dir):
    """The historical case: a shop of ~465 customers, an evaluation charged 0.1 of ε = 8, 100,000 runs each
    (measured: shift 9.5, TPR 0.11 at FPR 0.0003, bound 5.4 > 0.8), and the per-user selection passing."""
    from fedinterest.common.data import load_events
    from fedinterest.simulations.partition import partition_events

    large = audited_shop(partition_events(load_events(synthetic_dir), method="natural")["shop_04"])
    broken = audit_release(large, "broken-evaluation", 0.8, runs=100_000, seed=5)
    assert broken.lower_bound > 4.0 and broken.verdict == "flagged, as it should be"
    product = audit_release(large, "evaluation", 0.8, runs=100_000, seed=5)
    assert product.lower_bound <= 0.8 < product.ceiling and product.verdict == "pass"


def test_the_command_fails_when_the_broken_pipeline_is_not_flagged(synthetic_dir, tmp_path):
    """Too few runs to refute ε = 8: the broken pipeline goes unflagged ("no power") and the audit exits 1."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "fedinterest", "audit", "--data", str(synthetic_dir), "--shop", "shop_02", "--epsilon", "8",
         "--release", "broken-evaluation", "--runs", "2000", "--seed", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "NOT flagged (no power)" in result.stdout and "raise --canaries" in result.stdout
    row = json.loads((tmp_path / "report.json").read_text())["releases"][0]
    assert row["ceiling"] < 8.0 and row["verdict"] == "NOT flagged (no power)"
