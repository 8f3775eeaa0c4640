"""The Bayes oracle of the synthetic data: the best score any model can give, from the true parameters.

The synthetic source (`clsr.data.synthetic`) draws every event of user u from a two-part mixture: with
probability 1 − p_u the category comes from the long-term profile θ_u, with probability p_u it is the
current short-term topic z_j, a hidden Markov chain over categories; the item is then drawn by its
popularity q(i | c) inside the category. Knowing θ, p, the topic chain and q, the oracle computes for each
instance the exact predictive distribution of the target given the *observed* history (the user's earlier
events: items and categories only; never a driver or a topic).

Topic chain (the generator's rule): z_1 ~ g; after each event the topic stays with probability
s = 1 − 1/mean_topic_run, otherwise it jumps to a *different* category drawn from g restricted to c ≠ z:

    T[a, b] = P(z_{j+1} = b | z_j = a) = s·[a = b] + (1 − s)·g_b / (1 − g_a)·[a ≠ b].

Observation model (the item factor q(i_j | c_j) does not depend on z_j and cancels in the posterior):

    P(c_j | z_j) = (1 − p_u)·θ_u(c_j) + p_u·[c_j = z_j].

Forward filter: π_j = P(z_j | c_1..c_{j−1}) (π_1 = g), filtered_j ∝ π_j · P(c_j | z_j),
π_{j+1} = filtered_j · T. The predictive score of candidate item i of category c at the target t:

    full : P(i_t = i | h) = q(i | c)·[(1 − p_u)·θ_u(c) + p_u·π_t(c)]
    long : q(i | c)·θ_u(c)          (the long-term interest alone)
    short: q(i | c)·π_t(c)          (the short-term interest alone)

and the posterior probability that the target was short-driven, given the history and its category c_t:

    P(short | c_t, h) = p_u·π_t(c_t) / [(1 − p_u)·θ_u(c_t) + p_u·π_t(c_t)].

The oracle reads the user's whole history (models see the last max_len events of it). Time plays no part
in the generator's choice of categories or items, so the oracle ignores timestamps.

What "best" means. The full score is the exact predictive probability of the target: the best predictor
of the next item. Ranking the positive against negatives drawn by popularity is a different task: there
the AUC-optimal score is the likelihood ratio P(i_t = i | h) / P(i is drawn as a negative), so a score
that also divides by the negative sampler's item frequency can rank slightly better than the oracle.

Where the parameters come from: `oracle_params(options)` runs the generator with the dataset's source
options (stored in the prepared dataset's meta.json) and takes θ_u and p_u from its output
(``user_profiles``, ``user_params``); the category popularity g and the within-category item
probabilities q are rebuilt by replaying the generator's catalogue draw (`Catalogue.build`, the first
draw of its seeded generator), checked against the generated item → category table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from clsr import metrics as M
from clsr.config import from_dict
from clsr.data.store import PreparedData
from clsr.data.synthetic import Catalogue, SyntheticOptions, generate


@dataclass
class OracleParams:
    """The generator's true parameters, indexed by generator index (raw id − 1) of users, categories, items."""

    theta: np.ndarray  # (U, C) long-term profile θ_u, rows sum to 1
    p_short: np.ndarray  # (U,) short-term propensity p_u
    topic_prior: np.ndarray  # (C,) g: distribution of the first topic and weights of the jump targets
    stay: float  # s = 1 − 1/mean_topic_run: probability that the topic stays from one event to the next
    item_category: np.ndarray  # (I,) category of each item
    item_prob: np.ndarray  # (I,) q(i | its category)

    @property
    def n_categories(self) -> int:
        return len(self.topic_prior)

    def transition(self) -> np.ndarray:
        """T[a, b] = s·[a = b] + (1 − s)·g_b / (1 − g_a)·[a ≠ b] (the generator's topic chain)."""
        return topic_transition(self.topic_prior, self.stay)


def topic_transition(prior: np.ndarray, stay: float) -> np.ndarray:
    """(C, C) transition matrix of a topic that stays with probability `stay`, else jumps to c ≠ z by `prior`."""
    g = np.asarray(prior, dtype=np.float64)
    jump = g[None, :] / (1.0 - g[:, None])
    np.fill_diagonal(jump, 0.0)
    return stay * np.eye(len(g)) + (1.0 - stay) * jump


# ------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------
def oracle_params(options: SyntheticOptions | Mapping[str, Any] | None = None) -> OracleParams:
    """The true parameters of the synthetic log generated with `options` (the ``synthetic`` source options)."""
    o = options if isinstance(options, SyntheticOptions) else from_dict(SyntheticOptions, options, "source(synthetic)")
    df = generate(o)
    cat = Catalogue.build(o.n_items, o.n_categories, o.item_zipf, o.category_zipf, np.random.default_rng(o.seed))
    item = df["item"].to_numpy(np.int64) - 1
    if not np.array_equal(cat.item_cat[item], df["category"].to_numpy(np.int64) - 1):
        raise RuntimeError(
            "clsr.oracle: the replayed catalogue does not match the generated item categories; "
            "clsr.data.synthetic.generate no longer draws Catalogue.build first from its seeded generator"
        )
    profiles = df.attrs["user_profiles"]
    theta = np.zeros((o.n_users, o.n_categories))
    theta[profiles["user"].to_numpy(np.int64) - 1, profiles["category"].to_numpy(np.int64) - 1] = profiles["weight"]
    theta /= theta.sum(axis=1, keepdims=True)  # the generator samples from the normalised profile
    user_params = df.attrs["user_params"]
    p_short = np.zeros(o.n_users)
    p_short[user_params["user"].to_numpy(np.int64) - 1] = user_params["p_short"]
    return OracleParams(
        theta=theta,
        p_short=p_short,
        topic_prior=cat.g.copy(),
        stay=1.0 - 1.0 / o.mean_topic_run,
        item_category=cat.item_cat.astype(np.int64),
        item_prob=within_category_probs(cat),
    )


def within_category_probs(cat: Catalogue) -> np.ndarray:
    """q(i | c) of every item: the steps of the catalogue's per-category CDF (what its sampler draws by)."""
    n = len(cat.item_of)
    seg_start = np.zeros(n, dtype=bool)
    sizes = np.diff(cat.cat_ptr)
    seg_start[cat.cat_ptr[:-1][sizes > 0]] = True
    step = np.where(seg_start, cat.cum_q, cat.cum_q - np.concatenate([[0.0], cat.cum_q[:-1]]))
    q = np.empty(n)
    q[cat.item_of] = step
    return q


def params_for(data: PreparedData) -> OracleParams:
    """The true parameters of a prepared synthetic dataset, from the source options in its metadata."""
    source = dict(data.meta.get("source") or {})
    if source.get("name") != "synthetic":
        raise ValueError(
            f"dataset {data.name!r}: the oracle needs the synthetic source (meta.json source.name is "
            f"{source.get('name')!r}); pass oracle_params(options) for data built outside `prepare`"
        )
    source.pop("name")
    return oracle_params(source)


def generator_index(ids: np.ndarray, size: int, what: str, dataset: str) -> np.ndarray:
    """Generator index (raw id − 1) of each raw id string; a ValueError if an id is not in 1..size."""
    try:
        idx = np.asarray(ids).astype(np.int64) - 1
    except ValueError:
        raise ValueError(f"dataset {dataset!r}: {what} ids are not the synthetic generator's integers") from None
    bad = (idx < 0) | (idx >= size)
    if bad.any():
        raise ValueError(
            f"dataset {dataset!r}: {what} id {ids[np.flatnonzero(bad)[0]]} is outside the generator's 1..{size}; "
            "the oracle parameters come from other generator options"
        )
    return idx


@dataclass
class _Indexed:
    """The prepared data's codes translated to generator indices, checked against the parameters."""

    user: np.ndarray  # (U_rows,) generator user of each user row
    item: np.ndarray  # (I_codes,) generator item of each item code
    cate: np.ndarray  # (C_codes,) generator category of each category code


def _indexed(data: PreparedData, params: OracleParams) -> _Indexed:
    ix = _Indexed(
        user=generator_index(data.user_ids, len(params.p_short), "user", data.name),
        item=generator_index(data.item_ids, len(params.item_prob), "item", data.name),
        cate=generator_index(data.cate_ids, params.n_categories, "category", data.name),
    )
    mismatch = params.item_category[ix.item[data.event_item]] != ix.cate[data.event_cate]
    if mismatch.any():
        e = int(np.flatnonzero(mismatch)[0])
        raise ValueError(
            f"dataset {data.name!r}: event {e} has item {data.item_ids[data.event_item[e]]} in category "
            f"{data.cate_ids[data.event_cate[e]]}, but the generator puts it in category "
            f"{params.item_category[ix.item[data.event_item[e]]] + 1}; the oracle parameters come from other "
            "generator options"
        )
    return ix


# ------------------------------------------------------------------------------------------------
# the forward filter
# ------------------------------------------------------------------------------------------------
def forward_filter(
    categories: np.ndarray,
    offsets: np.ndarray,
    theta: np.ndarray,
    p_short: np.ndarray,
    prior: np.ndarray,
    transition: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """HMM forward pass over each user's topic chain, vectorised over users.

    `categories` (E,): category index of every event, users' events contiguous (`offsets`, (U+1,)), in
    order; `theta` (U, C), `p_short` (U,) per user of `offsets`. Returns (predicted, filtered), both (E, C):
    predicted[e] = P(z_e | the user's events before e) (the prior g at a user's first event),
    filtered[e] = P(z_e | the user's events up to e).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    n_events, n_cat = int(offsets[-1]), len(prior)
    predicted = np.empty((n_events, n_cat))
    filtered = np.empty((n_events, n_cat))
    by_length = np.argsort(-lengths, kind="stable")  # the users still active at step k are a prefix
    steps = np.arange(int(lengths.max(initial=0)))
    n_active = np.searchsorted(-lengths[by_length], -steps, side="left")  # users with more than k events
    belief = np.broadcast_to(np.asarray(prior, dtype=np.float64), (len(lengths), n_cat)).copy()
    for k, m in enumerate(n_active):
        users = by_length[:m]
        ev = offsets[users] + k
        c = categories[ev]
        pred = belief[users]
        predicted[ev] = pred
        rows = np.arange(m)
        post = pred * ((1.0 - p_short[users]) * theta[users, c])[:, None]
        post[rows, c] += p_short[users] * pred[rows, c]
        norm = post.sum(axis=1)
        if not (norm > 0).all():
            e = int(ev[np.flatnonzero(~(norm > 0))[0]])
            raise ValueError(f"event {e}: its category has probability 0 under the oracle parameters")
        post /= norm[:, None]
        filtered[ev] = post
        belief[users] = post @ transition
    return predicted, filtered


def topic_posterior(data: PreparedData, params: OracleParams) -> np.ndarray:
    """(E, C): P(z_e = c | the user's events before e) for every event e of the prepared data (c: generator
    category index); at an instance's target it is the one-step prediction π_t from its history."""
    ix = _indexed(data, params)
    return _predicted(data, params, ix)


def _predicted(data: PreparedData, params: OracleParams, ix: _Indexed) -> np.ndarray:
    user = ix.user
    predicted, _ = forward_filter(
        ix.cate[data.event_cate], data.user_offsets, params.theta[user], params.p_short[user],
        params.topic_prior, params.transition(),
    )
    return predicted


# ------------------------------------------------------------------------------------------------
# scores of a split
# ------------------------------------------------------------------------------------------------
def instances_of(data: PreparedData, candidates: str) -> str:
    """The instance split a candidate set belongs to: its own name when the data hold instances under it,
    else the split its name starts with (``test_uniform`` -> ``test``)."""
    if candidates in data.instances:
        return candidates
    for split in data.instances:
        if candidates.startswith(f"{split}_"):
            return split
    raise ValueError(f"dataset {data.name!r}: no instances for candidate set {candidates!r} "
                     f"(instance splits: {sorted(data.instances)})")


def _log_scores(q: np.ndarray, theta: np.ndarray, short: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore"):
        return {
            "full": np.log(q * ((1.0 - p) * theta + p * short)),
            "long": np.log(q * theta),
            "short": np.log(q * short),
        }


def score_candidates(data: PreparedData, split: str, params: OracleParams | None = None) -> dict[str, np.ndarray]:
    """The oracle's scores of the fixed (n, 1+N) candidates of `split` (positive in column 0), as logits
    (log-probabilities; −inf where the probability is 0): "full" = log P(i_t = i | h),
    "long" = log q(i|c)·θ_u(c), "short" = log q(i|c)·π_t(c). `clsr.metrics.evaluate_scores` scores them.
    `split` may name a candidate set of a split's instances, e.g. ``test_uniform`` (see `instances_of`)."""
    params = params or params_for(data)
    ix = _indexed(data, params)
    inst = instances_of(data, split)
    pi = _predicted(data, params, ix)[data.target_event(inst)]  # (n, C)
    user = ix.user[data.instances[inst].user]
    item = ix.item[data.candidates[split].item]  # (n, 1+N)
    cate = params.item_category[item]
    rows = np.arange(len(user))[:, None]
    return _log_scores(params.item_prob[item], params.theta[user[:, None], cate], pi[rows, cate],
                       params.p_short[user][:, None])


def score_catalogue(data: PreparedData, split: str, params: OracleParams | None = None) -> dict[str, np.ndarray]:
    """The oracle's logits ("full", "long", "short" as in `score_candidates`) of every item of the catalogue
    at each target of `split`: an (n, 1 + I) matrix whose column code + 1 scores item code `code` (the
    prepared data's ``item_ids``) and whose column 0 (padding, as in `clsr.metrics.full_ranking_metrics`)
    is −inf."""
    params = params or params_for(data)
    ix = _indexed(data, params)
    pi = _predicted(data, params, ix)[data.target_event(split)]  # (n, C)
    user = ix.user[data.instances[split].user]
    cate = params.item_category[ix.item]  # (I,)
    scores = _log_scores(params.item_prob[ix.item][None, :], params.theta[user][:, cate], pi[:, cate],
                         params.p_short[user][:, None])
    pad = np.full((len(user), 1), -np.inf)
    return {k: np.concatenate([pad, v], axis=1) for k, v in scores.items()}


def popularity_scores(data: PreparedData, split: str = "test") -> np.ndarray:
    """The non-personal reference: each candidate of `split` scored by its item's count among the train
    targets (no history, no profile)."""
    tr = data.instances["train"]
    counts = np.bincount(data.event_item[data.user_offsets[tr.user] + tr.pos], minlength=len(data.item_ids))
    return counts[data.candidates[split].item].astype(np.float64)


def short_driven_posterior(data: PreparedData, split: str, params: OracleParams | None = None) -> np.ndarray:
    """(n,) P(short | c_t, h) = p_u·π_t(c_t) / [(1 − p_u)·θ_u(c_t) + p_u·π_t(c_t)] at each target of `split`."""
    params = params or params_for(data)
    ix = _indexed(data, params)
    target = data.target_event(split)
    pi = _predicted(data, params, ix)[target]
    user = ix.user[data.instances[split].user]
    c = ix.cate[data.event_cate[target]]
    p = params.p_short[user]
    short = p * pi[np.arange(len(user)), c]
    return short / ((1.0 - p) * params.theta[user, c] + short)


def oracle_alpha_auc(data: PreparedData, split: str = "test", params: OracleParams | None = None) -> float:
    """AUC of the oracle's long-driven probability 1 − P(short | c_t, h) at telling long-driven (driver 0)
    from short-driven targets of `split`: the best α-AUC any model can reach on this data."""
    if "driver" not in data.event_extra:
        raise ValueError(f"dataset {data.name!r} records no driver per event (event_extra 'driver'); use a synthetic dataset")
    driver = data.event_extra["driver"][data.target_event(split)]
    return M.auc(1.0 - short_driven_posterior(data, split, params), driver == 0)
