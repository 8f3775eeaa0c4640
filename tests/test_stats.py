"""Paired bootstrap over seeds × users and Kendall τ (clsr.stats) against constructed cases and loops."""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from clsr import stats as S


def by_seed(values: np.ndarray, ids: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(seeds, users) array -> {seed: (user ids, values)}."""
    return {s: (ids, values[s]) for s in range(values.shape[0])}


def users_that_vary(rng, n_seeds=3, n_users=500, spread=0.2):
    """Per-user metric with a large user effect and a small seed effect."""
    user_level = 0.6 + spread * rng.standard_normal(n_users)
    return user_level + 0.01 * rng.standard_normal((n_seeds, n_users))


def centred(noise: np.ndarray) -> np.ndarray:
    """Noise with mean exactly 0 in every seed row."""
    return noise - noise.mean(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# constructed cases with a known answer
# ------------------------------------------------------------------------------------------------
def test_constant_improvement_plus_small_noise_is_detected():
    rng = np.random.default_rng(0)
    a = users_that_vary(rng)
    b = a + 0.05 + centred(0.01 * rng.standard_normal(a.shape))
    ids = np.arange(a.shape[1]) + 100
    r = S.paired_bootstrap(by_seed(a, ids), by_seed(b, ids))
    assert r.difference == pytest.approx(0.05, abs=1e-12)
    assert 0 < r.low <= 0.05 <= r.high
    assert r.verdict == "B better"
    assert (r.users, r.seeds, r.replicates, r.level) == (500, (0, 1, 2), 1000, 0.95)
    assert r.per_seed == pytest.approx((0.05, 0.05, 0.05), abs=1e-12)
    swapped = S.paired_bootstrap(by_seed(b, ids), by_seed(a, ids))
    assert swapped.difference == pytest.approx(-0.05, abs=1e-12)
    assert swapped.high < 0 and swapped.verdict == "A better"


def test_identical_models_give_a_zero_interval():
    rng = np.random.default_rng(1)
    a = users_that_vary(rng)
    ids = np.arange(a.shape[1])
    r = S.paired_bootstrap(by_seed(a, ids), by_seed(a.copy(), ids))
    assert (r.difference, r.low, r.high) == (0.0, 0.0, 0.0)
    assert r.verdict == "no detectable difference"


def test_centred_noise_interval_contains_zero():
    rng = np.random.default_rng(2)
    a = users_that_vary(rng)
    b = a + centred(0.05 * rng.standard_normal(a.shape))
    ids = np.arange(a.shape[1])
    r = S.paired_bootstrap(by_seed(a, ids), by_seed(b, ids))
    assert r.low < 0 < r.high
    assert r.verdict == "no detectable difference"


def test_pure_noise_interval_covers_zero_about_95_percent_of_the_time():
    # 200 independent data sets with true difference 0: coverage ~ Binomial(200, 0.95), sd 1.5 %
    rng = np.random.default_rng(3)
    covered = 0
    for trial in range(200):
        a = users_that_vary(rng, n_users=200)
        b = a + 0.05 * rng.standard_normal(a.shape)
        r = S.paired_bootstrap_arrays(a, b, replicates=500, seed=trial)
        covered += r.low <= 0 <= r.high
    assert 0.88 <= covered / 200 <= 0.995


def test_paired_interval_is_narrower_than_unpaired_when_users_vary():
    rng = np.random.default_rng(4)
    a = users_that_vary(rng, spread=0.2)
    b = a + 0.01 + 0.01 * rng.standard_normal(a.shape)
    paired = S.paired_bootstrap_arrays(a, b, replicates=1000, seed=0)
    # unpaired: A's users and B's users resampled independently (the pairing thrown away)
    n_users = a.shape[1]
    idx_a = rng.integers(0, n_users, size=(1000, n_users))
    idx_b = rng.integers(0, n_users, size=(1000, n_users))
    unpaired = b.mean(axis=0)[idx_b].mean(axis=1) - a.mean(axis=0)[idx_a].mean(axis=1)
    unpaired_low, unpaired_high = np.quantile(unpaired, [0.025, 0.975])
    assert unpaired_low < 0 < unpaired_high  # the user spread hides the 0.01 without pairing
    assert paired.verdict == "B better"
    assert paired.high - paired.low < 0.2 * (unpaired_high - unpaired_low)


# ------------------------------------------------------------------------------------------------
# the documented scheme, against a plain loop
# ------------------------------------------------------------------------------------------------
def test_replicates_follow_the_documented_scheme():
    rng = np.random.default_rng(5)
    n_seeds, n_users, replicates = 3, 40, 200
    a = rng.random((n_seeds, n_users))
    b = a + 0.02 * rng.standard_normal((n_seeds, n_users)) + 0.01
    w = rng.integers(1, 6, size=n_users).astype(float)
    got = S.paired_bootstrap_arrays(a, b, w, replicates=replicates, level=0.9, seed=11)
    draws = np.random.default_rng(11).integers(0, n_users, size=(replicates, n_users))
    estimates = []
    for drawn in draws:
        per_seed = []
        for s in range(n_seeds):  # the same drawn users for every seed
            d = b[s, drawn] - a[s, drawn]
            per_seed.append(np.sum(w[drawn] * d) / np.sum(w[drawn]))
        estimates.append(np.mean(per_seed))
    low, high = np.quantile(estimates, [0.05, 0.95])
    assert got.low == pytest.approx(low, abs=1e-12)
    assert got.high == pytest.approx(high, abs=1e-12)
    point = np.mean([np.sum(w * (b[s] - a[s])) / w.sum() for s in range(n_seeds)])
    assert got.difference == pytest.approx(point, abs=1e-12)


def test_mapping_form_aligns_users_by_id_and_applies_weights():
    rng = np.random.default_rng(6)
    ids = rng.permutation(np.arange(1000, 1060))
    a = rng.random((2, 60))
    b = rng.random((2, 60))
    w = rng.integers(1, 9, size=60)
    # model B lists its users in another order for each seed
    b_map = {}
    for s in range(2):
        order = rng.permutation(60)
        b_map[s] = (ids[order], b[s, order])
    got = S.paired_bootstrap(by_seed(a, ids), b_map, weights=(ids[::-1], w[::-1]), seed=3)
    sort = np.argsort(ids)
    want = S.paired_bootstrap_arrays(a[:, sort], b[:, sort], w[sort], seed=3)
    assert (got.low, got.high, got.difference) == pytest.approx((want.low, want.high, want.difference), abs=1e-12)
    assert got.difference == pytest.approx(np.mean([np.sum(w * (b[s] - a[s])) / w.sum() for s in range(2)]))


def test_per_user_mean():
    ids, means, counts = S.per_user_mean(np.array([3, 1, 3, 3]), np.array([1.0, 0.5, 0.0, 0.5]))
    assert ids.tolist() == [1, 3]
    assert means.tolist() == [0.5, 0.5]
    assert counts.tolist() == [1, 3]


def test_fixed_seed_is_deterministic_and_seed_matters():
    rng = np.random.default_rng(7)
    a = users_that_vary(rng, n_users=300)
    b = a + 0.02 * rng.standard_normal(a.shape)
    first = S.paired_bootstrap_arrays(a, b, seed=5)
    assert first == S.paired_bootstrap_arrays(a, b, seed=5)
    other = S.paired_bootstrap_arrays(a, b, seed=6)
    assert (other.low, other.high) != (first.low, first.high)


def test_1000_replicates_3_seeds_1000_users_is_fast():
    rng = np.random.default_rng(8)
    a = rng.random((3, 1000))
    b = rng.random((3, 1000))
    ids = np.arange(1000)
    S.paired_bootstrap(by_seed(a, ids), by_seed(b, ids))  # warm-up
    start = time.perf_counter()
    S.paired_bootstrap(by_seed(a, ids), by_seed(b, ids), replicates=1000)
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_value_error():
    ids = np.arange(5)
    good = {0: (ids, np.zeros(5))}
    with pytest.raises(ValueError, match="users differ"):
        S.paired_bootstrap(good, {0: (np.arange(1, 6), np.zeros(5))})
    with pytest.raises(ValueError, match="users differ"):
        S.paired_bootstrap(good, {0: (np.arange(4), np.zeros(4))})
    with pytest.raises(ValueError, match="users differ"):  # same users for every seed
        S.paired_bootstrap({0: (ids, np.zeros(5)), 1: (ids[:4], np.zeros(4))},
                           {0: (ids, np.zeros(5)), 1: (ids[:4], np.zeros(4))})
    with pytest.raises(ValueError, match="seeds differ"):
        S.paired_bootstrap(good, {1: (ids, np.zeros(5))})
    with pytest.raises(ValueError, match="at least one seed"):
        S.paired_bootstrap({}, {})
    with pytest.raises(ValueError, match="no users"):
        S.paired_bootstrap({0: (np.arange(0), np.zeros(0))}, {0: (np.arange(0), np.zeros(0))})
    with pytest.raises(ValueError, match="appears twice"):
        S.paired_bootstrap({0: (np.array([1, 1]), np.zeros(2))}, {0: (np.array([1, 1]), np.zeros(2))})
    with pytest.raises(ValueError, match="equal-length"):
        S.paired_bootstrap({0: (ids, np.zeros(4))}, good)
    with pytest.raises(ValueError, match="finite"):
        S.paired_bootstrap({0: (ids, np.array([0, 0, np.nan, 0, 0]))}, good)
    with pytest.raises(ValueError, match="weights"):
        S.paired_bootstrap(good, good, weights=(ids[:4], np.ones(4)))
    with pytest.raises(ValueError, match="at least one seed and one user"):
        S.paired_bootstrap_arrays(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="equal"):
        S.paired_bootstrap_arrays(np.zeros((2, 3)), np.zeros((2, 4)))


# ------------------------------------------------------------------------------------------------
# Kendall τ
# ------------------------------------------------------------------------------------------------
def brute_tau_b(x: list[float], y: list[float]) -> float:
    """(concordant − discordant) / sqrt((pairs − ties in x)(pairs − ties in y)), counted pair by pair."""
    concordant = discordant = ties_x = ties_y = pairs = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        pairs += 1
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        ties_x += dx == 0
        ties_y += dy == 0
        if dx * dy > 0:
            concordant += 1
        elif dx * dy < 0:
            discordant += 1
    return (concordant - discordant) / math.sqrt((pairs - ties_x) * (pairs - ties_y))


@pytest.mark.parametrize("n", [3, 7, 12, 20])
def test_kendall_tau_matches_a_pair_count(n):
    rng = np.random.default_rng(n)
    models = [f"m{i}" for i in range(n)]
    x = rng.integers(0, 5, size=n).astype(float)  # ties on both sides
    y = x + rng.integers(-2, 3, size=n)
    got = S.kendall_tau(dict(zip(models, x)), dict(zip(reversed(models), y[::-1])))
    assert got.tau == pytest.approx(brute_tau_b(list(x), list(y)), abs=1e-12)
    assert got.models == tuple(sorted(models))
    assert 0 <= got.p_value <= 1


def test_kendall_tau_of_orderings():
    order = ["clsr", "slirec", "sasrec", "din", "gru4rec"]
    paper = {m: -i for i, m in enumerate(order)}
    assert S.kendall_tau(paper, paper).tau == pytest.approx(1.0)
    assert S.kendall_tau(paper, {m: i for i, m in enumerate(order)}).tau == pytest.approx(-1.0)
    one_swap = {m: -i for i, m in enumerate(["slirec", "clsr", "sasrec", "din", "gru4rec"])}
    assert S.kendall_tau(paper, one_swap).tau == pytest.approx((9 - 1) / 10)
    with pytest.raises(ValueError, match="models differ"):
        S.kendall_tau(paper, {"clsr": 1.0, "din": 0.0})
    with pytest.raises(ValueError, match="at least 2"):
        S.kendall_tau({"clsr": 1.0}, {"clsr": 2.0})


# ------------------------------------------------------------------------------------------------
# paired_resample_bootstrap: a statistic recomputed on resampled instances (an AUC over instances)
# ------------------------------------------------------------------------------------------------
def pair_count_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC by counting (positive, negative) pairs, ties ½ (independent of clsr.metrics.auc)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_resample_bootstrap_swapped_seeds_give_exactly_zero():
    """Seed 0 pairs (A = x, B = z), seed 1 (A = z, B = x): the per-seed differences are ±d with d ≠ 0, and
    because every seed uses the same resampled instances their mean is exactly 0 on every replicate."""
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.4
    x = y + rng.normal(0, 1.0, 300)  # a weak scorer
    z = y + rng.normal(0, 0.3, 300)  # a strong one
    r = S.paired_resample_bootstrap(pair_count_auc, [(x, y), (z, y)], [(z, y), (x, y)], replicates=300)
    d = pair_count_auc(z, y) - pair_count_auc(x, y)
    assert d > 0.1
    assert r.per_seed == pytest.approx((d, -d), abs=1e-15)
    assert r.difference == 0.0 and r.low == 0.0 and r.high == 0.0
    assert r.low <= 0 <= r.high and r.verdict == "no detectable difference"
    assert (r.seeds, r.users, r.replicates) == ((0, 1), 300, 300)


def test_resample_bootstrap_monotone_transform_is_no_difference():
    """B = exp(A's scores): the same ranking, so the AUC difference is 0 on the data and on every resample."""
    rng = np.random.default_rng(4)
    y = rng.random(200) < 0.5
    x = y + rng.normal(0, 1.0, 200)
    r = S.paired_resample_bootstrap(pair_count_auc, [(x, y)], [(np.exp(x), y)], replicates=200)
    assert (r.difference, r.low, r.high) == (0.0, 0.0, 0.0)
    assert r.verdict == "no detectable difference" and r.per_seed == (0.0,)


def test_resample_bootstrap_detects_a_clear_difference():
    """A scores at random (AUC ≈ 0.5), B separates the classes perfectly (AUC 1): B − A ≈ 0.5, and the
    interval excludes 0; swapping the sides flips the sign and the verdict."""
    rng = np.random.default_rng(5)
    seeds_a, seeds_b, expect = [], [], []
    for _ in range(3):
        y = rng.random(400) < 0.3
        noise = rng.random(400)
        perfect = y + 0.5 * rng.random(400)
        seeds_a.append((noise, y))
        seeds_b.append((perfect, y))
        expect.append(1.0 - pair_count_auc(noise, y))
    r = S.paired_resample_bootstrap(pair_count_auc, seeds_a, seeds_b, replicates=300, seeds=(0, 1, 2))
    assert r.per_seed == pytest.approx(tuple(expect), abs=1e-12)
    assert r.difference == pytest.approx(np.mean(expect), abs=1e-12)
    assert 0.4 < r.difference < 0.6
    assert 0 < r.low <= r.difference <= r.high and r.verdict == "B better"
    flipped = S.paired_resample_bootstrap(pair_count_auc, seeds_b, seeds_a, replicates=300)
    assert flipped.difference == pytest.approx(-r.difference, abs=1e-12)
    assert flipped.high < 0 and flipped.verdict == "A better"


def test_resample_bootstrap_follows_the_documented_scheme():
    """The replicates by hand: the same draw for both models and both seeds, the mean of the per-seed
    differences, undefined replicates (a draw with one class only) left out, then the quantiles."""
    rng = np.random.default_rng(6)
    n, reps = 8, 400
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    a = [(rng.random(n), y), (rng.random(n), y)]
    b = [(rng.random(n), y), (rng.random(n), y)]
    r = S.paired_resample_bootstrap(pair_count_auc, a, b, replicates=reps, level=0.9, seed=11)
    draws = np.random.default_rng(11).integers(0, n, size=(reps, n))
    est = []
    for idx in draws:
        d = [pair_count_auc(b[s][0][idx], y[idx]) - pair_count_auc(a[s][0][idx], y[idx]) for s in range(2)]
        est.append(np.mean(d))
    est = np.array(est)
    assert np.isnan(est).any()  # some draws hold one class only: they are left out
    est = est[np.isfinite(est)]
    assert (r.low, r.high) == pytest.approx(tuple(np.quantile(est, [0.05, 0.95])), abs=1e-12)
    assert r.level == 0.9


def test_resample_bootstrap_bad_input():
    y = np.array([True, False, True])
    s = np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same number"):
        S.paired_resample_bootstrap(pair_count_auc, [(s, y)], [(s, y), (s, y)])
    with pytest.raises(ValueError, match="same n"):
        S.paired_resample_bootstrap(pair_count_auc, [(s, y)], [(s[:2], y[:2])])
    with pytest.raises(ValueError, match="undefined on the full data"):
        S.paired_resample_bootstrap(pair_count_auc, [(s, ~y | True)], [(s, ~y | True)])


def test_verdict_sentences_name_winners_only_where_the_interval_excludes_zero():
    """The report's sentences (clsr.report.verdict_sentences) from real paired comparisons: a baseline CLSR
    beats by a constant, one that beats CLSR, and an identical one (difference exactly 0)."""
    import pandas as pd

    from clsr import compare
    from clsr.report import verdict_sentences

    rng = np.random.default_rng(0)
    ids = np.arange(400)
    clsr = users_that_vary(rng, n_users=400)
    cases = {"Weaker": clsr - 0.05, "Stronger": clsr + 0.05, "Twin": clsr.copy()}
    rows = []
    for name, values in cases.items():
        c = S.paired_bootstrap(by_seed(values, ids), by_seed(clsr, ids), replicates=300)
        rows.append({"dataset": "d", "baseline": name, "metric": "GAUC", **compare.row(c, name, "CLSR")})
    (sentence,) = verdict_sentences(pd.DataFrame(rows))
    assert sentence.startswith("- d, GAUC (3 seeds; CLSR − baseline, 95 % interval): CLSR is ")
    assert "better than Weaker (+0.0500" in sentence
    assert "worse than Stronger (-0.0500" in sentence
    assert "no detectable difference from Twin (+0.0000 [+0.0000, +0.0000])" in sentence


def test_ablation_table_words_follow_the_paired_intervals(tmp_path):
    """clsr.report.ablation_table on constructed per-instance files: a variant whose per-user AUC is the main
    runs' plus 0.05 is "better", one equal to them shows "no detectable difference" with a zero interval."""
    import pandas as pd

    from clsr.report import ablation_table
    from clsr.rundir import save_per_instance

    rng = np.random.default_rng(1)
    users = np.arange(300)
    base = np.clip(users_that_vary(rng, n_users=300), 0.0, 0.95)
    rows, main = [], []
    for seed in range(3):
        for name, shift, sink in (("main", 0.0, main), ("plus", 0.05, rows), ("same", 0.0, rows)):
            path = tmp_path / f"{name}_seed{seed}.npz"
            save_per_instance(path, {"sampled/user": users, "sampled/auc": base[seed] + shift,
                                     "sampled/rr": base[seed]})
            m = float((base[seed] + shift).mean())
            sink.append({"variant": name, "seed": seed, "npz": str(path), "best_epoch": 4, "stop_reason": "patience",
                         **{f"test_{k}": m for k in ("auc", "gauc", "mrr", "ndcg@2")}})
    md = ablation_table(pd.DataFrame(rows), "axis", ["plus", "same"], pd.DataFrame(main), "main CLSR")
    words = md.strip().splitlines()[-1]
    assert words.startswith("In words (test GAUC, variant − main CLSR")
    assert "better than the main CLSR: plus (+0.0500 [+0.0500, +0.0500], 3 seeds)" in words
    assert "no detectable difference from the main CLSR: same (+0.0000 [+0.0000, +0.0000], 3 seeds)" in words
    assert "worse than" not in words
