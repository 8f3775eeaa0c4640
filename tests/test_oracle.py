"""The Bayes oracle of the synthetic data (clsr.oracle) against independent computations.

- The forward filter equals brute-force enumeration of every topic path on a tiny chain.
- Its parameters match the generator's draws (topic transitions, within-category item frequencies).
- Without short-term drivers (p_short_mean = 0) the topic posterior carries no signal.
- With a strong planted signal the oracle beats a popularity scorer and a briefly trained CLSR.
- The test event's own record (driver, topic, item, category, time) does not reach its scores.
"""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from clsr import metrics as M
from clsr import oracle as O
from clsr.data.protocol import ProtocolConfig, build
from clsr.data.synthetic import generate
from clsr.train import fit


# ------------------------------------------------------------------------------------------------
# the forward filter against enumeration
# ------------------------------------------------------------------------------------------------
def brute_force(cats: list[int], theta, p, g, stay):
    """P(z_t | c_1..c_t), P(z_{t+1} | c_1..c_t) and P(c_{t+1} | c_1..c_t) for t = len(cats), by summing the
    joint probability of every topic path z_1..z_{t+1} (plain Python, the generator's rules written out)."""
    C, t = len(g), len(cats)

    def step(a, b):
        return stay if a == b else (1 - stay) * g[b] / (1 - g[a])

    def emit(c, z):
        return (1 - p) * theta[c] + p * (c == z)

    last = np.zeros(C)
    nxt = np.zeros(C)
    for path in itertools.product(range(C), repeat=t + 1):
        w = g[path[0]]
        for j in range(1, t + 1):
            w *= step(path[j - 1], path[j])
        for j in range(t):
            w *= emit(cats[j], path[j])
        last[path[t - 1]] += w
        nxt[path[t]] += w
    next_cat = np.array([sum(nxt[z] * emit(c, z) for z in range(C)) for c in range(C)]) / nxt.sum()
    return last / last.sum(), nxt / nxt.sum(), next_cat


def test_forward_filter_equals_path_enumeration():
    rng = np.random.default_rng(0)
    C = 3
    lengths = [1, 2, 4, 6, 5]
    cats = [rng.integers(0, C, n) for n in lengths]
    theta = rng.dirichlet(np.full(C, 0.7), len(lengths))
    p = rng.uniform(0.1, 0.9, len(lengths))
    g = rng.dirichlet(np.ones(C))
    stay = 0.6
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    predicted, filtered = O.forward_filter(
        np.concatenate(cats), offsets, theta, p, g, O.topic_transition(g, stay)
    )
    # one more step per user: append a dummy event so `predicted` holds P(z_{t+1} | c_1..c_t) too
    ext = [np.append(c, 0) for c in cats]
    ext_offsets = np.concatenate([[0], np.cumsum([len(c) for c in ext])])
    ext_pred, _ = O.forward_filter(np.concatenate(ext), ext_offsets, theta, p, g, O.topic_transition(g, stay))
    for u, c in enumerate(cats):
        np.testing.assert_allclose(predicted[offsets[u]], g, rtol=0, atol=1e-12)
        for t in range(1, len(c) + 1):
            post, pred, next_cat = brute_force(list(c[:t]), theta[u], p[u], g, stay)
            np.testing.assert_allclose(filtered[offsets[u] + t - 1], post, rtol=0, atol=1e-12)
            pred_oracle = ext_pred[ext_offsets[u] + t]
            np.testing.assert_allclose(pred_oracle, pred, rtol=0, atol=1e-12)
            np.testing.assert_allclose((1 - p[u]) * theta[u] + p[u] * pred_oracle, next_cat, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# the parameters against the generator's draws
# ------------------------------------------------------------------------------------------------
def test_params_match_the_generators_draws():
    """Counts in the generated log against the oracle's T and q, as z-scores of binomial counts.

    Under correct parameters each |z| is a standard-normal-sized deviation; the largest of ~500 of them
    stays below 5 (P(|z| > 5) ≈ 6e-7 each). A wrong transition rule (e.g. jumps allowed onto the same
    topic, or uniform jump targets) or a misaligned q (ranks of another category) gives |z| in the tens.
    """
    options = {"n_users": 1000, "n_items": 300, "n_categories": 6, "mean_events": 60, "seed": 5}
    df = generate(options)
    params = O.oracle_params(options)
    user = df["user"].to_numpy()
    topic = df["topic"].to_numpy() - 1
    same_user = user[1:] == user[:-1]
    a, b = topic[:-1][same_user], topic[1:][same_user]
    C = params.n_categories
    counts = np.zeros((C, C))
    np.add.at(counts, (a, b), 1)
    T = params.transition()
    expected = counts.sum(axis=1, keepdims=True) * T
    z_topic = (counts - expected) / np.sqrt(np.maximum(expected * (1 - T), 1e-12))
    assert np.abs(z_topic).max() < 5
    assert np.all(counts[np.eye(C, dtype=bool)] > 0) and np.all(np.diag(T) == params.stay)

    item = df["item"].to_numpy() - 1
    n_cat = np.bincount(params.item_category[item], minlength=C)
    n_item = np.bincount(item, minlength=len(params.item_prob))
    mean = n_cat[params.item_category] * params.item_prob
    z_item = (n_item - mean) / np.sqrt(np.maximum(mean * (1 - params.item_prob), 1e-12))
    assert np.abs(z_item).max() < 5
    np.testing.assert_allclose(np.bincount(params.item_category, weights=params.item_prob), 1.0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# no short-term drivers
# ------------------------------------------------------------------------------------------------
NO_SHORT = {"n_users": 800, "n_items": 400, "n_categories": 8, "mean_events": 25,
            "p_short_mean": 0.0, "category_zipf": 0.0, "seed": 11}


@pytest.fixture(scope="module")
def no_short():
    data = build(generate(NO_SHORT), ProtocolConfig(max_len=20, test_negatives=19, seed=0), name="no_short")
    return data, O.oracle_params(NO_SHORT)


def test_without_short_term_drivers_the_topic_carries_no_signal(no_short):
    """p_u = 0 for every user (p_short_mean = 0) and a uniform topic prior g (category_zipf = 0).

    Then every event's category is independent of the topic, so the filter's posterior is the prior,
    which stays uniform under the chain: the short-only score is log(q(i|c) / C) whatever the history, the
    short-driven posterior is 0, and the full oracle is the long-only one.

    Chance level. The prepared candidates cannot show it: their negatives are the first N *distinct*
    popularity draws, which leaves them less concentrated on popular items than a positive is, so any
    popularity-aware scorer with no history at all lands above 0.5 there. Here each test row instead gets
    as negatives the positives of the next N rows in a random cyclic order of the n rows. The rows are
    i.i.d. (users are), so for a score that depends on the item alone each ordered pair's
    h(r, v) = [f_r > f_v] + ½[f_r = f_v] has mean ½, and GAUC (equal weights: one row per user, ties
    'mean') is the mean of the n·N sampled pairs. Hoeffding-decomposing h − ½ = a(r) − a(v) + d(r, v):
    every row is a positive once and a negative exactly N times, so the a-terms cancel; the d-terms of
    distinct pairs (N < n/2: each pair sampled once) are uncorrelated with variance ≤ ¼. So
    sd(GAUC) ≤ 1 / (2√(nN)), and the test allows 4 of those. On the same candidates the long-only
    oracle must be far above chance, so the design does detect signal.
    """
    data, params = no_short
    assert np.all(params.p_short == 0.0)
    s = O.score_candidates(data, "test", params)
    np.testing.assert_array_equal(O.short_driven_posterior(data, "test", params), 0.0)
    np.testing.assert_array_equal(s["full"], s["long"])
    item = O.generator_index(data.item_ids, len(params.item_prob), "item", data.name)[data.candidates["test"].item]
    np.testing.assert_allclose(s["short"], np.log(params.item_prob[item] / params.n_categories), rtol=0, atol=1e-12)

    test = data.instances["test"]
    n = len(test)
    N = 99
    assert N < n / 2
    order = np.random.default_rng(0).permutation(n)
    cyclic = order[(np.arange(n)[:, None] + np.arange(N + 1)[None, :]) % n]  # row order[k]: itself, then N next
    rows = cyclic[:, 0]
    # scores of the positives; identical up to the forward pass's rounding, which the rounding removes
    short_pos = np.round(s["short"][:, 0], 9)
    assert len(np.unique(test.user)) == n
    gauc_short = M.evaluate_scores(short_pos[cyclic], test.user[rows], ties="mean")["gauc"]
    assert abs(gauc_short - 0.5) <= 4 / (2 * np.sqrt(n * N))
    # the long-only oracle scores row r's user against the other rows' positive items
    user = O.generator_index(data.user_ids, len(params.p_short), "user", data.name)[test.user]
    pos_item = item[:, 0]
    cand = pos_item[cyclic]
    long_scores = np.log(params.item_prob[cand] * params.theta[user[rows][:, None], params.item_category[cand]])
    np.testing.assert_allclose(long_scores[:, 0], s["long"][rows, 0], rtol=0, atol=1e-12)
    gauc_long = M.evaluate_scores(long_scores, test.user[rows], ties="mean")["gauc"]
    assert gauc_long > 0.5 + 20 / (2 * np.sqrt(n * N))


# ------------------------------------------------------------------------------------------------
# strong signal: the oracle beats popularity and a trained CLSR
# ------------------------------------------------------------------------------------------------
STRONG = {"n_users": 400, "n_items": 200, "n_categories": 8, "mean_events": 30, "seed": 3}
STRONG_PROTOCOL = ProtocolConfig(max_len=20, test_negatives=19, seed=0)
CLSR_TRAIN = {"epochs": 2, "patience": 2, "batch_size": 128, "seed": 0, "progress": False, "threads": 1,
              "max_train_instances": 0}


@pytest.fixture(scope="module")
def strong():
    data = build(generate(STRONG), STRONG_PROTOCOL, name="strong")
    return data, O.oracle_params(STRONG)


def popularity_scores(data) -> np.ndarray:
    """Train-target count of each candidate: the best score without the user's history."""
    tr = data.instances["train"]
    counts = np.bincount(data.event_item[data.user_offsets[tr.user] + tr.pos], minlength=len(data.item_ids))
    return counts[data.candidates["test"].item].astype(np.float64)


def test_oracle_beats_popularity_and_a_trained_clsr(strong):
    """Margins on 400 test users, whose GAUC has a standard error of ≈ 0.015 (see test_regression):
    the oracle must clear the popularity scorer by 0.15 (10 standard errors), and CLSR trained as in
    test_regression (two epochs over every train instance, which lifts it 0.10 above popularity there)
    by any amount on GAUC and MRR: the oracle ranks by the exact predictive probability of the target,
    and the comparison is paired (the same candidates), so most of the sampling noise is shared."""
    data, params = strong
    users = data.instances["test"].user
    oracle = M.evaluate_scores(O.score_candidates(data, "test", params)["full"], users)
    popularity = M.evaluate_scores(popularity_scores(data), users)
    assert oracle["gauc"] > popularity["gauc"] + 0.15
    assert oracle["mrr"] > popularity["mrr"]
    threads = torch.get_num_threads()
    try:
        clsr = fit(data, "clsr", {}, CLSR_TRAIN, run_dir=None).metrics["test"]
    finally:
        torch.set_num_threads(threads)
    assert clsr["gauc"] > popularity["gauc"] + 0.10  # the model learned from the history
    assert oracle["gauc"] > clsr["gauc"]
    assert oracle["mrr"] > clsr["mrr"]


def test_alpha_auc_is_the_posterior_driver_auc(strong):
    """oracle_alpha_auc = AUC of 1 − P(short | c_t, h) for driver 0, computed here by counting pairs."""
    data, params = strong
    post = O.short_driven_posterior(data, "test", params)
    assert np.all((post >= 0) & (post <= 1))
    driver = data.event_extra["driver"][data.target_event("test")]
    long_p = 1 - post
    a, b = long_p[driver == 0], long_p[driver == 1]
    pairs = (a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
    assert O.oracle_alpha_auc(data, "test", params) == pytest.approx(pairs, abs=1e-12)
    assert pairs > 0.5


# ------------------------------------------------------------------------------------------------
# no information from the test event
# ------------------------------------------------------------------------------------------------
def test_scores_ignore_the_test_events_record(strong):
    """Rewriting each test target's driver, topic, item, category and time leaves the candidates' scores
    unchanged (the candidates are the fixed code matrix; column 0 still names the true item); rewriting
    the driver and topic leaves the short-driven posterior unchanged (it reads the target's category)."""
    data, params = strong
    before = O.score_candidates(data, "test", params)
    post_before = O.short_driven_posterior(data, "test", params)
    target = data.target_event("test")

    changed = copy.deepcopy(data)
    changed.event_extra["driver"][target] = 1 - changed.event_extra["driver"][target]
    n_cat = params.n_categories
    changed.event_extra["topic"][target] = changed.event_extra["topic"][target] % n_cat + 1
    np.testing.assert_array_equal(O.short_driven_posterior(changed, "test", params), post_before)

    other = np.roll(target, 1)  # another user's test event: a consistent (item, category) pair
    changed.event_item[target] = changed.event_item[other]
    changed.event_cate[target] = changed.event_cate[other]
    changed.event_ts[target] += 12345
    assert np.any(changed.event_cate[target] != data.event_cate[target])
    after = O.score_candidates(changed, "test", params)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_params_for_needs_the_synthetic_source(strong):
    data, _ = strong
    other = copy.copy(data)
    other.meta = {**data.meta, "source": {"name": "ml100k"}}
    with pytest.raises(ValueError, match="synthetic source"):
        O.params_for(other)
