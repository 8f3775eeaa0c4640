"""Disentanglement study: does CLSR separate long- and short-term interests better than models without
self-supervision? Counterfactual evaluation (any dataset) and ground-truth measures (synthetic data).

Models (``disentanglement.models``): CLSR and SLi-Rec from the main runs (seed 0), and CLSR without the
contrastive loss (``clsr_nocon``), trained here into ``runs/disentanglement/<dataset>/``. Every model is
read out three ways on the same fixed test candidates:

* ``model``: as trained, with its learned fusion weight α;
* ``long``:  α = 1, the long-term interest u^l alone (``forward(batch, alpha_override=1.0)``);
* ``short``: α = 0, the short-term interest u^s alone.

Counterfactual test sets (official-clsr.md §5.3; the paper's own protocol is not available):

* ``original``: the test histories as stored;
* ``recent``:   only the last ``recent_k`` events of each history, the time features recomputed on the
  shortened history (`clsr.data.batches.eval_batches(recent_k=)`); a short-term encoder should lose
  little, a long-term one much;
* ``shuffled``: each history's items and categories permuted among its valid positions, timestamps
  (and so the time features) left in place, as the released ShuffleSASequentialIterator. The
  permutation of an instance is a fixed function of (``shuffle_seed``, instance index, position)
  (`shuffle_keys`), so it does not depend on the batch size. Order-sensitive short-term modelling
  should suffer, order-free long-term modelling should not. (Both long-term encoders here are
  attention pooling without positions, hence *exactly* order-invariant by construction.)

Ground truth (synthetic data, `clsr.data.synthetic`): each test target was drawn either from the user's
long-term profile θ_u (driver 0) or from the current short-term topic z (driver 1).

* ``alpha_auc``: ROC-AUC of the positives' α for "long-driven" (driver 0). Chance 0.5; 1 = α ranks
  every long-driven event above every short-driven one.
* per-driver accuracy of each readout on long- and short-driven test instances (GAUC, MRR, hit@10), and
  ``specialisation`` = [AUC(α=1 | long) − AUC(α=1 | short)] − [AUC(α=0 | long) − AUC(α=0 | short)]
  (mean per-instance AUC, = GAUC when every user has one test instance): > 0 when the long readout
  is relatively better on long-driven events and the short readout on short-driven ones. 0 for any
  model whose two readouts are the same function (entangled), whatever the base rates.
* interest match: one representative item per category (its most frequent train target) is scored as
  a (n_test, K) candidate matrix; per instance the K category scores of a readout are compared with
  the truth: Spearman ρ and graded NDCG (gains θ_u) against the user's long-term profile, and the
  reciprocal rank of the current topic (expected value under random tie-breaking). Contrasts
  ``profile_contrast`` = ρ(α=1) − ρ(α=0) and ``topic_contrast`` = RR_topic(α=0) − RR_topic(α=1) are 0
  for an entangled model. Chance levels are computed exactly (ρ 0, RR H_K / K, NDCG per user), and a
  non-personal reference (categories scored by train popularity) is reported next to them: topics are
  drawn by global popularity, so popularity alone beats chance on the topic measure.

95 % intervals are percentile bootstraps over test instances (``boot_reps`` resamples, fixed seed).
Everything is computed from the models and the stored data; nothing is tuned toward the paper's claim.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch

from clsr import metrics as M
from clsr.data import batches as B
from clsr.data.store import PreparedData, atomic_write_json, atomic_write_text

SETS = ("original", "recent", "shuffled")
#: readout name -> alpha_override (None = the model's own α)
READOUTS: dict[str, float | None] = {"model": None, "long": 1.0, "short": 0.0}
READOUT_LABELS = {"model": "as trained", "long": "α = 1 (long only)", "short": "α = 0 (short only)"}
SET_LABELS = {"original": "original", "recent": "recent-only", "shuffled": "shuffled"}
MODEL_LABELS = {"clsr": "CLSR", "clsr_nocon": "CLSR w/o contrastive", "slirec": "SLi-Rec"}
#: metric-name suffix of each readout in the JSON (gauc, gauc_long, gauc_short, ...)
SUFFIX = {"model": "", "long": "_long", "short": "_short"}


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


# ================================================================================================
# counterfactual test sets
# ================================================================================================
_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a well-mixed bijection."""
    z = np.asarray(x, dtype=_U64) + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def shuffle_keys(seed: int, instance: np.ndarray, length: int) -> np.ndarray:
    """Uniform keys in [0, 1), shape (n, length), a fixed function of (seed, instance, position)."""
    instance = np.asarray(instance, dtype=np.int64)
    if (instance < 0).any():
        raise ValueError("shuffle_keys: instances need their index in the split (batch.instance >= 0)")
    with np.errstate(over="ignore"):
        s = _splitmix64(np.array([int(seed) % 2**64], dtype=_U64))
        h = _splitmix64(s ^ instance.astype(_U64))
        k = _splitmix64(h[:, None] ^ _splitmix64(np.arange(length, dtype=_U64))[None, :])
    return (k >> _U64(11)).astype(np.float64) / float(2**53)


def shuffle_batch(batch: B.Batch, seed: int) -> B.Batch:
    """Counterfactual "shuffled": permute each history's items and categories among its valid positions.

    The same operation as `clsr.data.batches.shuffle_history` (timestamps, time features, mask and
    candidates untouched; padding stays at the end), with the permutation drawn from `shuffle_keys` so
    that it depends only on (seed, instance), not on the batching.
    """
    L = batch.hist_item.shape[1]
    keys = torch.from_numpy(shuffle_keys(seed, batch.instance.cpu().numpy(), L)).to(batch.mask.device)
    keys = torch.where(batch.mask > 0, keys, torch.full_like(keys, 2.0))  # padding sorts last
    perm = keys.argsort(dim=1, stable=True)
    return replace(batch, hist_item=batch.hist_item.gather(1, perm), hist_cate=batch.hist_cate.gather(1, perm))


def data_settings(data: PreparedData) -> tuple[int, float]:
    return int(data.meta.get("max_len", 50)), float(data.meta.get("time_unit", 86400.0))


def counterfactual_batches(
    data: PreparedData,
    kind: str,
    split: str = "test",
    batch_size: int = 500,
    recent_k: int = 5,
    shuffle_seed: int = 0,
) -> Iterator[B.Batch]:
    """Evaluation batches of `split` (stored order, fixed candidates) for one counterfactual set."""
    max_len, time_unit = data_settings(data)
    if kind == "original":
        yield from B.eval_batches(data, split, batch_size, max_len, time_unit)
    elif kind == "recent":
        if recent_k < 1:
            raise ValueError(f"disentanglement.recent_k: must be >= 1, got {recent_k}")
        yield from B.eval_batches(data, split, batch_size, max_len, time_unit, recent_k=recent_k)
    elif kind == "shuffled":
        for b in B.eval_batches(data, split, batch_size, max_len, time_unit):
            yield shuffle_batch(b, shuffle_seed)
    else:
        raise ValueError(f"counterfactual set {kind!r} is not one of {list(SETS)}")


# ================================================================================================
# running a model
# ================================================================================================
def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def score_batches(
    model: Callable,
    batches: Iterable[B.Batch],
    readouts: Mapping[str, float | None] = READOUTS,
    keep_vectors: bool = False,
) -> dict[str, Any]:
    """One forward per batch and readout. Returns ``logits`` {readout: (n, C)}, ``alpha_pos`` (n,) (the
    positives' α of the ``model`` readout; NaN for models without α), ``user`` (n,) vocab index,
    ``user_row`` and ``instance`` (n,), and with `keep_vectors` ``u_long`` (n, d) and ``u_short`` (n, d)
    (the short-term vector of the positive candidate).

    `model` is any callable ``model(batch, alpha_override=None) -> {'logits': (B, C), 'alpha': (B, C)}``.
    """
    if hasattr(model, "eval"):
        model.eval()
    device = _device(model)
    logits: dict[str, list[np.ndarray]] = {r: [] for r in readouts}
    out: dict[str, list[np.ndarray]] = {"alpha_pos": [], "user": [], "user_row": [], "instance": []}
    if keep_vectors:
        out.update(u_long=[], u_short=[])
    for batch in batches:
        b = batch.to(device)
        for name, a in readouts.items():
            res = model(b) if a is None else model(b, alpha_override=a)
            logits[name].append(res["logits"].float().cpu().numpy())
            if a is not None:
                continue
            if "alpha" in res:
                out["alpha_pos"].append(res["alpha"].float().cpu().numpy().reshape(batch.size, -1)[:, 0])
            else:
                out["alpha_pos"].append(np.full(batch.size, np.nan, np.float32))
            if keep_vectors:
                ul, us = res["u_long"].float().cpu().numpy(), res["u_short"].float().cpu().numpy()
                out["u_long"].append(ul[:, 0] if ul.ndim == 3 else ul)
                out["u_short"].append(us[:, 0] if us.ndim == 3 else us)
        out["user"].append(batch.user.numpy())
        out["user_row"].append(batch.user_row.numpy())
        out["instance"].append(batch.instance.numpy())
    result: dict[str, Any] = {"logits": {r: np.concatenate(v) if v else np.zeros((0, 0)) for r, v in logits.items()}}
    for k, v in out.items():
        result[k] = np.concatenate(v) if v else np.zeros((0,))
    if len(result["alpha_pos"]) != len(result["user"]):  # no readout with the model's own α
        result["alpha_pos"] = np.full(len(result["user"]), np.nan)
    return result


def _round(x: float, nd: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def counterfactual_eval(
    model: Callable,
    data: PreparedData,
    split: str = "test",
    sets: Iterable[str] = SETS,
    recent_k: int = 5,
    shuffle_seed: int = 0,
    batch_size: int = 500,
    ties: str = "released",
) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """For each set: AUC / GAUC / MRR of every readout (``auc``, ``auc_long``, ``auc_short``, ...) and
    ``mean_alpha_pos`` (mean α of the model readout on positive rows). Also returns the raw scores."""
    metrics: dict[str, dict[str, float]] = {}
    raw: dict[str, dict] = {}
    for kind in sets:
        s = score_batches(model, counterfactual_batches(data, kind, split, batch_size, recent_k, shuffle_seed))
        row: dict[str, float] = {}
        for r in READOUTS:
            m = M.evaluate_scores(s["logits"][r], s["user"], (10,), ties)
            for key in ("auc", "gauc", "mrr"):
                row[f"{key}{SUFFIX[r]}"] = float(m[key])
        row["mean_alpha_pos"] = float(np.nanmean(s["alpha_pos"])) if np.isfinite(s["alpha_pos"]).any() else float("nan")
        metrics[kind] = row
        raw[kind] = s
    return metrics, raw


def counterfactual_indices(cf: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Derived from the counterfactual GAUCs (positive = the direction a disentangled model predicts):

    * ``recent_gap``  = drop(α=1) − drop(α=0) under recent-only histories;
    * ``shuffle_gap`` = drop(α=0) − drop(α=1) under shuffled histories;
    with drop = GAUC(original) − GAUC(counterfactual)."""
    out = {}
    o = cf.get("original")
    if o is None:
        return out
    if "recent" in cf:
        r = cf["recent"]
        out["recent_gap"] = (o["gauc_long"] - r["gauc_long"]) - (o["gauc_short"] - r["gauc_short"])
    if "shuffled" in cf:
        s = cf["shuffled"]
        out["shuffle_gap"] = (o["gauc_short"] - s["gauc_short"]) - (o["gauc_long"] - s["gauc_long"])
    return out


# ================================================================================================
# ground truth (synthetic data)
# ================================================================================================
def has_ground_truth(data: PreparedData) -> bool:
    return "driver" in data.event_extra and "topic" in data.event_extra


@dataclass
class Truth:
    """What the generator knows about each instance of a split, aligned with the split's order."""

    driver: np.ndarray  # (n,) int: 0 = drawn from the long-term profile, 1 = from the short-term topic
    topic: np.ndarray  # (n,) position in `cats` of the current topic at the target (-1: not scorable)
    theta: np.ndarray | None  # (n, K) the user's long-term profile weights on `cats` (None: no profiles)
    cats: np.ndarray  # (K,) category codes scored (seen in train, with a train item)
    rep_items: np.ndarray  # (K,) item code representing each category (its most frequent train target)
    cat_popularity: np.ndarray  # (K,) share of train targets in each category (non-personal reference)


def representative_items(data: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(category codes, item codes, popularity): for each category seen in train, its most frequent
    train-target item (ties: lowest code); categories without such an item are left out."""
    tr = data.target_event("train")
    items, cates = data.event_item[tr], data.event_cate[tr]
    ok = (data.item_index[items] > 0) & (data.cate_index[cates] > 0)
    df = pd.DataFrame({"c": cates[ok].astype(np.int64), "i": items[ok].astype(np.int64)})
    if df.empty:
        raise ValueError("representative_items: no train target with an item and category in the vocabulary")
    counts = df.groupby(["c", "i"]).size().reset_index(name="n")
    counts = counts.sort_values(["c", "n", "i"], ascending=[True, False, True]).drop_duplicates("c")
    cats = counts["c"].to_numpy(np.int64)
    pop = df.groupby("c").size().reindex(cats).to_numpy(np.float64)
    return cats, counts["i"].to_numpy(np.int64), pop / pop.sum()


def load_truth(data: PreparedData, profiles: pd.DataFrame | None = None, split: str = "test") -> Truth:
    """Ground truth of `split`. `profiles`: the generator's user_profiles table (user, category,
    weight; raw ids as in the interactions table), e.g. data/prepared/<ds>/user_profiles.parquet."""
    if not has_ground_truth(data):
        raise ValueError(f"dataset {data.name!r} carries no ground truth (event_extra 'driver' and 'topic')")
    target = data.target_event(split)
    driver = data.event_extra["driver"][target].astype(np.int64)
    cats, rep_items, pop = representative_items(data)
    pos_of_code = np.full(len(data.cate_ids), -1, np.int64)
    pos_of_code[cats] = np.arange(len(cats))
    code_of_raw = {raw: i for i, raw in enumerate(np.asarray(data.cate_ids).astype(str))}
    # 'topic' holds the raw category id (like the interactions table's category column)
    topic_raw = np.asarray(data.event_extra["topic"])[target]
    topic_code = np.array([code_of_raw.get(str(t), -1) for t in topic_raw.tolist()], np.int64)
    topic = np.where(topic_code >= 0, pos_of_code[np.maximum(topic_code, 0)], -1)
    theta = None
    if profiles is not None and len(profiles):
        row_of_user = {raw: i for i, raw in enumerate(np.asarray(data.user_ids).astype(str))}
        urow = np.array([row_of_user.get(str(u), -1) for u in profiles["user"].tolist()], np.int64)
        ccode = np.array([code_of_raw.get(str(c), -1) for c in profiles["category"].tolist()], np.int64)
        cpos = np.where(ccode >= 0, pos_of_code[np.maximum(ccode, 0)], -1)
        keep = (urow >= 0) & (cpos >= 0)
        per_user = np.zeros((data.n_users, len(cats)), np.float64)
        np.add.at(per_user, (urow[keep], cpos[keep]), profiles["weight"].to_numpy(np.float64)[keep])
        theta = per_user[data.instances[split].user]
    return Truth(driver=driver, topic=topic, theta=theta, cats=cats, rep_items=rep_items, cat_popularity=pop)


def category_batches(
    data: PreparedData, truth: Truth, split: str = "test", batch_size: int = 500
) -> Iterator[B.Batch]:
    """The instances of `split` with their real histories and, as candidates, the K representative
    items (the same (n, K) code matrix on every row)."""
    max_len, time_unit = data_settings(data)
    inst = data.instances[split]
    for s in range(0, len(inst), batch_size):
        sl = slice(s, s + batch_size)
        n = len(inst.user[sl])
        yield B.make_batch(
            data, inst.user[sl], inst.pos[sl],
            np.broadcast_to(truth.rep_items, (n, len(truth.cats))),
            np.broadcast_to(truth.cats, (n, len(truth.cats))),
            max_len, time_unit, instance=np.arange(s, s + n),
        )


# ---- per-instance measures -----------------------------------------------------------------------
def instance_auc(scores: np.ndarray) -> np.ndarray:
    """Per row: share of negatives (columns 1..) scored below the positive (column 0), ties ½."""
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[:, :1], s[:, 1:]
    return ((neg < pos).sum(1) + 0.5 * (neg == pos).sum(1)) / neg.shape[1]


def _harmonic(n: np.ndarray) -> np.ndarray:
    n = np.asarray(n, dtype=np.int64)
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max(initial=0)) + 1))])
    return table[n]


def target_rr(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Reciprocal rank of column `target[i]` in row i, in expectation over random tie-breaking
    (so constant scores give the chance value H_K / K). NaN where target < 0."""
    s = np.asarray(scores, dtype=np.float64)
    ok = target >= 0
    out = np.full(len(s), np.nan)
    if not ok.any():
        return out
    rows = s[ok]
    t = rows[np.arange(len(rows)), target[ok]][:, None]
    g = (rows > t).sum(1)  # strictly better
    e = (rows == t).sum(1)  # tie block size, the target included
    out[ok] = (_harmonic(g + e) - _harmonic(g)) / e
    return out


def rank_rows(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(np.asarray(x, dtype=np.float64), method="average", axis=1)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row of `a` with the same row of `b` (average ranks); NaN for a constant row."""
    ra, rb = rank_rows(a), rank_rows(b)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def graded_ndcg(scores: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NDCG of each row's ranking by `scores` with graded `gains`, its expected value under a random
    ranking). Tied scores share the mean discount of the positions they occupy (expected NDCG under
    random tie-breaking). NaN where a row has no gain."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(gains, dtype=np.float64)
    K = s.shape[1]
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    cum = np.concatenate([[0.0], np.cumsum(disc)])
    lo = rankdata(-s, method="min", axis=1).astype(np.int64)
    hi = rankdata(-s, method="max", axis=1).astype(np.int64)
    eff = (cum[hi] - cum[lo - 1]) / (hi - lo + 1)
    dcg = (g * eff).sum(1)
    idcg = (np.sort(g, axis=1)[:, ::-1] * disc).sum(1)
    chance = g.sum(1) * disc.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = idcg > 0
        return np.where(ok, dcg / np.where(ok, idcg, 1.0), np.nan), np.where(ok, chance / np.where(ok, idcg, 1.0), np.nan)


# ---- bootstrap -----------------------------------------------------------------------------------
def bootstrap_ci(
    stat: Callable[[np.ndarray], float], n: int, reps: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of `stat(idx)` over `reps` resamples of the n instances (fixed seed)."""
    if reps <= 0 or n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(reps)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    q = (1 - level) / 2
    return float(np.quantile(vals, q)), float(np.quantile(vals, 1 - q))


def _mean_ci(x: np.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    lo, hi = bootstrap_ci(lambda i: x[i].mean(), len(x), reps, seed)
    return float(x.mean()), lo, hi


# ---- the measures of one model -------------------------------------------------------------------
def alpha_separation(alpha_pos: np.ndarray, driver: np.ndarray, reps: int = 200, seed: int = 0) -> dict[str, float]:
    """AUC of α for 'long-driven' (driver 0), with a bootstrap interval, and mean α per driver."""
    a = np.asarray(alpha_pos, dtype=np.float64)
    y = np.asarray(driver) == 0
    out = {
        "alpha_auc": M.auc(a, y),
        "mean_alpha_long_driven": float(a[y].mean()) if y.any() else float("nan"),
        "mean_alpha_short_driven": float(a[~y].mean()) if (~y).any() else float("nan"),
    }
    out["alpha_auc_lo"], out["alpha_auc_hi"] = bootstrap_ci(lambda i: M.auc(a[i], y[i]), len(a), reps, seed)
    return out


def driver_accuracy(
    logits: Mapping[str, np.ndarray], users: np.ndarray, driver: np.ndarray, ties: str = "released",
    reps: int = 200, seed: int = 0,
) -> dict[str, float]:
    """GAUC / MRR / hit@10 of each readout on long-driven (driver 0) and short-driven instances, and the
    specialisation index (difference in differences of mean per-instance AUC) with an interval."""
    out: dict[str, float] = {}
    groups = {"long_driven": np.asarray(driver) == 0, "short_driven": np.asarray(driver) == 1}
    for r, sc in logits.items():
        for g, sel in groups.items():
            if not sel.any():
                continue
            m = M.evaluate_scores(sc[sel], users[sel], (10,), ties)
            out[f"gauc{SUFFIX[r]}@{g}"] = m["gauc"]
            out[f"mrr{SUFFIX[r]}@{g}"] = m["mrr"]
            if "hit@10" in m:
                out[f"hit10{SUFFIX[r]}@{g}"] = m["hit@10"]
    out["n_long_driven"] = int(groups["long_driven"].sum())
    out["n_short_driven"] = int(groups["short_driven"].sum())
    if "long" in logits and "short" in logits and groups["long_driven"].any() and groups["short_driven"].any():
        al, as_ = instance_auc(logits["long"]), instance_auc(logits["short"])
        d = np.asarray(driver)

        def did(i: np.ndarray) -> float:
            dl, di = d[i] == 0, d[i] == 1
            if not dl.any() or not di.any():
                return float("nan")
            a1, a0 = al[i], as_[i]
            return float((a1[dl].mean() - a1[di].mean()) - (a0[dl].mean() - a0[di].mean()))

        out["specialisation"] = did(np.arange(len(d)))
        out["specialisation_lo"], out["specialisation_hi"] = bootstrap_ci(did, len(d), reps, seed)
    return out


def interest_match(
    cat_scores: Mapping[str, np.ndarray], truth: Truth, reps: int = 200, seed: int = 0
) -> dict[str, float]:
    """Category scores of each readout against the true profile (Spearman ρ, graded NDCG) and the true
    current topic (reciprocal rank), plus the two contrasts with intervals."""
    out: dict[str, float] = {}
    per: dict[str, np.ndarray] = {}
    for r, sc in cat_scores.items():
        sfx = SUFFIX[r]
        if truth.theta is not None:
            rho = spearman_rows(sc, truth.theta)
            ndcg, _ = graded_ndcg(sc, truth.theta)
            per[f"rho{sfx}"] = rho
            out[f"profile_rho{sfx}"] = float(np.nanmean(rho))
            out[f"profile_ndcg{sfx}"] = float(np.nanmean(ndcg))
        rr = target_rr(sc, truth.topic)
        per[f"rr{sfx}"] = rr
        out[f"topic_mrr{sfx}"] = float(np.nanmean(rr))
    if "rho_long" in per and "rho_short" in per:
        diff = per["rho_long"] - per["rho_short"]
        out["profile_contrast"], out["profile_contrast_lo"], out["profile_contrast_hi"] = _mean_ci(diff, reps, seed)
    if "rr_long" in per and "rr_short" in per:
        diff = per["rr_short"] - per["rr_long"]
        out["topic_contrast"], out["topic_contrast_lo"], out["topic_contrast_hi"] = _mean_ci(diff, reps, seed)
    return out


def reference_levels(truth: Truth, n_candidates: int) -> dict[str, dict[str, float]]:
    """Chance (random scores) and non-personal popularity reference for the ground-truth measures."""
    K = len(truth.cats)
    chance: dict[str, float] = {
        "alpha_auc": 0.5, "specialisation": 0.0, "profile_contrast": 0.0, "topic_contrast": 0.0,
        "gauc": 0.5, "mrr": float(_harmonic(np.array([n_candidates]))[0] / n_candidates),
        "hit10": min(10, n_candidates) / n_candidates,  # the positive lands in the top 10 of C
        "topic_mrr": float(_harmonic(np.array([K]))[0] / K), "profile_rho": 0.0,
    }
    pop = np.broadcast_to(truth.cat_popularity, (len(truth.driver), K))
    popularity = {"topic_mrr": float(np.nanmean(target_rr(pop, truth.topic)))}
    if truth.theta is not None:
        ndcg_pop, ndcg_chance = graded_ndcg(pop, truth.theta)
        chance["profile_ndcg"] = float(np.nanmean(ndcg_chance))
        popularity["profile_rho"] = float(np.nanmean(spearman_rows(pop, truth.theta)))
        popularity["profile_ndcg"] = float(np.nanmean(ndcg_pop))
    return {"chance": chance, "popularity": popularity}


def ground_truth_eval(
    model: Callable,
    data: PreparedData,
    truth: Truth,
    original: Mapping[str, Any] | None = None,
    split: str = "test",
    batch_size: int = 500,
    ties: str = "released",
    reps: int = 200,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, Any]]:
    """All ground-truth measures of one model. `original`: its `score_batches` output on the original
    test set (computed here when None). Returns (measures, raw: original scores + category scores)."""
    if original is None:
        original = score_batches(model, counterfactual_batches(data, "original", split, batch_size))
    out: dict[str, float] = {}
    if np.isfinite(original["alpha_pos"]).all():
        out.update(alpha_separation(original["alpha_pos"], truth.driver, reps, seed))
    out.update(driver_accuracy(original["logits"], original["user"], truth.driver, ties, reps, seed))
    cat = score_batches(model, category_batches(data, truth, split, batch_size))
    out.update(interest_match(cat["logits"], truth, reps, seed))
    return out, {"original": original, "categories": cat}


# ================================================================================================
# vectors for the 2-D projection
# ================================================================================================
def projection_batch(data: PreparedData, n_users: int = 5, per_user: int = 8, split: str = "test") -> B.Batch:
    """The last `per_user` targets (any split) of the `n_users` test users with the longest sequences,
    each with its own target as the single candidate."""
    max_len, time_unit = data_settings(data)
    users = np.unique(data.instances[split].user)
    lengths = np.diff(data.user_offsets)[users]
    chosen = users[np.argsort(-lengths, kind="stable")[:n_users]]
    rows, pos = [], []
    for u in chosen:
        n = int(np.diff(data.user_offsets)[u])
        p = np.arange(max(1, n - per_user), n)
        rows.append(np.full(len(p), u))
        pos.append(p)
    rows_a, pos_a = np.concatenate(rows), np.concatenate(pos)
    ev = data.user_offsets[rows_a] + pos_a
    return B.make_batch(
        data, rows_a, pos_a, data.event_item[ev][:, None], data.event_cate[ev][:, None], max_len, time_unit,
        instance=np.arange(len(rows_a)),
    )


def interest_vectors(model: Callable, batch: B.Batch) -> dict[str, np.ndarray]:
    s = score_batches(model, [batch], {"model": None}, keep_vectors=True)
    return {"u_long": s["u_long"], "u_short": s["u_short"], "user_row": s["user_row"], "alpha_pos": s["alpha_pos"]}


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates (n, 2), explained variance ratio (2,)) of the rows of x."""
    xc = x - x.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return xc @ vt[:2].T, ratio


# ================================================================================================
# report: markdown and figures
# ================================================================================================
def _f(x: Any, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.{nd}f}" if isinstance(x, (float, np.floating)) else str(x)


def _ci(d: Mapping[str, Any], key: str, nd: int = 3) -> str:
    v, lo, hi = d.get(key), d.get(f"{key}_lo"), d.get(f"{key}_hi")
    if v is None:
        return "—"
    if lo is None or hi is None:
        return _f(v, nd)
    return f"{_f(v, nd)} [{_f(lo, nd)}, {_f(hi, nd)}]"


def _signed(x: float | None, nd: int = 4) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:+.{nd}f}"


def _verdict(vals: Mapping[str, Mapping[str, Any]], key: str, name: str, higher: str) -> str:
    """One honest sentence: which model is best on `key`, and whether CLSR's interval separates it."""
    have = {m: v for m, v in vals.items() if v.get(key) is not None and np.isfinite(v[key])}
    if "clsr" not in have or len(have) < 2:
        return f"- {name}: not enough models to compare."
    best = max(have, key=lambda m: have[m][key])
    others = {m: v for m, v in have.items() if m != "clsr"}
    best_other = max(others, key=lambda m: others[m][key])
    diff = have["clsr"][key] - others[best_other][key]
    c, o = have["clsr"], others[best_other]
    overlap = ""
    if all(f"{key}_{s}" in d and d[f"{key}_{s}"] is not None for d in (c, o) for s in ("lo", "hi")):
        sep = c[f"{key}_lo"] > o[f"{key}_hi"] or o[f"{key}_lo"] > c[f"{key}_hi"]
        overlap = " (95 % intervals do not overlap)" if sep else " (95 % intervals overlap: not distinguishable)"
    verdict = "CLSR is best" if best == "clsr" else f"CLSR is not best ({_label(best)} is)"
    return (f"- {name} ({higher}): {verdict}; CLSR {_f(c[key], 3)} vs {_label(best_other)} "
            f"{_f(o[key], 3)}, difference {_signed(diff, 3)}{overlap}.")


def markdown_report(results: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The disentanglement table (reports/tables/disentanglement.md) from the results dict."""
    k, seed = settings.get("recent_k"), settings.get("shuffle_seed")
    lines = [
        "# Disentanglement of long- and short-term interests",
        "",
        f"Models: {', '.join(_label(m) for m in settings.get('models', []))} (seed 0). Test split, the fixed "
        f"1 + N candidates of the main table. Generated by `clsr.disentangle` (stage `disentanglement`).",
        "",
        "Readouts: **as trained** = the model's own fusion weight α; **α = 1** = long-term interest u^l only; "
        "**α = 0** = short-term interest u^s only (`forward(batch, alpha_override=...)`).",
        f"Counterfactual sets: **recent-only** keeps the last {k} events of each history (time features "
        f"recomputed on the short history); **shuffled** permutes each history's items (seed {seed}; timestamps "
        "stay in place). A disentangled model's α = 1 readout should lose much under recent-only and little "
        "under shuffling, its α = 0 readout the reverse. Both long-term encoders are attention pooling "
        "without positions, so their α = 1 readout is order-invariant *by construction*: a zero shuffled "
        "change there is design, not evidence.",
        "",
    ]
    for ds, per_model in results.items():
        if ds.startswith("_"):
            continue
        models = [m for m in settings.get("models", []) if m in per_model]
        if not models:
            continue
        lines += [f"## {ds}", "", "### Counterfactual evaluation (AUC / GAUC)", ""]
        sets = [s for s in SETS if s in per_model[models[0]]]
        header = ["model", "readout"]
        for s in sets:
            header += [f"{SET_LABELS[s]} AUC", f"{SET_LABELS[s]} GAUC"] + ([] if s == "original" else [f"Δ GAUC {SET_LABELS[s]}"])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in models:
            for r in READOUTS:
                sfx = SUFFIX[r]
                cells = [_label(m), READOUT_LABELS[r]]
                o = per_model[m]["original"]
                for s in sets:
                    d = per_model[m][s]
                    cells += [_f(d.get(f"auc{sfx}")), _f(d.get(f"gauc{sfx}"))]
                    if s != "original":
                        cells.append(_signed(d[f"gauc{sfx}"] - o[f"gauc{sfx}"]))
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Mean α on positive rows (as trained) and the counterfactual indices "
                  "(recent gap = GAUC drop of α = 1 minus that of α = 0 under recent-only; shuffle gap = GAUC drop "
                  "of α = 0 minus that of α = 1 under shuffling; both > 0 in the direction a disentangled model "
                  "predicts, 0 for an entangled one):", ""]
        header = ["model"] + [f"mean α {SET_LABELS[s]}" for s in sets] + ["recent gap", "shuffle gap"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in models:
            idx = per_model[m].get("indices", {})
            cells = [_label(m)] + [_f(per_model[m][s].get("mean_alpha_pos")) for s in sets]
            cells += [_signed(idx.get("recent_gap")), _signed(idx.get("shuffle_gap"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if len(models) > 1 and all("indices" in per_model[m] for m in models):
            lines += ["Verdicts (counterfactual; single seed, no interval):"]
            iv = {m: per_model[m]["indices"] for m in models}
            lines.append(_verdict(iv, "recent_gap", "recent gap", "higher = more disentangled"))
            lines.append(_verdict(iv, "shuffle_gap", "shuffle gap", "higher = more disentangled"))
            lines.append("")

        gts = {m: per_model[m]["ground_truth"] for m in models if "ground_truth" in per_model[m]}
        if not gts:
            continue
        ref = per_model.get("_reference", {})
        chance, pop = ref.get("chance", {}), ref.get("popularity", {})
        g0 = next(iter(gts.values()))
        lines += [
            "### Ground truth: does α follow the true driver?", "",
            f"Test targets: {g0.get('n_long_driven')} long-driven (drawn from the user's long-term profile), "
            f"{g0.get('n_short_driven')} short-driven (drawn from the current short-term topic). "
            "α-AUC = ROC-AUC of the positives' α for 'long-driven' (chance 0.5, perfect 1). Brackets: 95 % "
            "bootstrap intervals over test instances.", "",
            "| model | α-AUC (chance 0.5) | mean α, long-driven | mean α, short-driven |",
            "|---|---|---|---|",
        ]
        for m, g in gts.items():
            lines.append(f"| {_label(m)} | {_ci(g, 'alpha_auc')} | {_f(g.get('mean_alpha_long_driven'))} | "
                         f"{_f(g.get('mean_alpha_short_driven'))} |")
        lines += [
            "", "### Ground truth: accuracy of each readout by true driver", "",
            f"GAUC (chance {_f(chance.get('gauc'), 2)}), MRR (chance {_f(chance.get('mrr'), 3)}), hit@10 (chance "
            f"{_f(chance.get('hit10'), 3)}). Specialisation = [AUC(α=1 | long) − AUC(α=1 | short)] − "
            "[AUC(α=0 | long) − AUC(α=0 | short)] (mean per-instance AUC; 0 for an entangled model or chance, "
            "> 0 = each readout is relatively better on its own driver).", "",
            "| model | readout | long-driven GAUC | long-driven MRR | long-driven hit@10 | short-driven GAUC | "
            "short-driven MRR | short-driven hit@10 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m, g in gts.items():
            for r in READOUTS:
                sfx = SUFFIX[r]
                cells = [_label(m), READOUT_LABELS[r]]
                for grp in ("long_driven", "short_driven"):
                    cells += [_f(g.get(f"gauc{sfx}@{grp}")), _f(g.get(f"mrr{sfx}@{grp}")), _f(g.get(f"hit10{sfx}@{grp}"))]
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "| model | specialisation (chance 0) |", "|---|---|"]
        for m, g in gts.items():
            lines.append(f"| {_label(m)} | {_ci(g, 'specialisation')} |")
        has_profile = any("profile_rho_long" in g for g in gts.values())
        lines += [
            "", "### Ground truth: do u^l and u^s match the true profile and topic?", "",
            "Each category is represented by its most frequent train item; per test instance the readout's "
            "scores of these K items are compared with the truth. Profile ρ = Spearman correlation with the "
            "user's long-term profile weights θ_u; profile NDCG = NDCG with gains θ_u; topic MRR = reciprocal "
            "rank of the current short-term topic. Expected pattern for a disentangled model: α = 1 matches "
            "the profile, α = 0 the topic. Profile contrast = ρ(α=1) − ρ(α=0); topic contrast = MRR(α=0) − "
            "MRR(α=1) (both 0 for an entangled model).", "",
        ]
        cols = (["profile ρ α=1", "profile ρ α=0", "profile NDCG α=1", "profile NDCG α=0"] if has_profile else []) + [
            "topic MRR α=0", "topic MRR α=1"]
        keys = (["profile_rho_long", "profile_rho_short", "profile_ndcg_long", "profile_ndcg_short"] if has_profile else []) + [
            "topic_mrr_short", "topic_mrr_long"]
        lines += ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for m, g in gts.items():
            lines.append(f"| {_label(m)} | " + " | ".join(_f(g.get(k_)) for k_ in keys) + " |")
        ref_key = {"profile_rho_long": "profile_rho", "profile_rho_short": "profile_rho", "profile_ndcg_long": "profile_ndcg",
                   "profile_ndcg_short": "profile_ndcg", "topic_mrr_short": "topic_mrr", "topic_mrr_long": "topic_mrr"}
        lines.append("| *chance (random scores)* | " + " | ".join(_f(chance.get(ref_key[k_])) for k_ in keys) + " |")
        lines.append("| *popularity (non-personal)* | " + " | ".join(_f(pop.get(ref_key[k_])) for k_ in keys) + " |")
        lines += ["", "| model | " + ("profile contrast (chance 0) | " if has_profile else "") + "topic contrast (chance 0) |",
                  "|---|" + ("---|" if has_profile else "") + "---|"]
        for m, g in gts.items():
            lines.append(f"| {_label(m)} | " + (f"{_ci(g, 'profile_contrast')} | " if has_profile else "")
                         + f"{_ci(g, 'topic_contrast')} |")
        lines += ["", "Verdicts (ground truth):"]
        lines.append(_verdict(gts, "alpha_auc", "α-AUC", "higher = α follows the true driver"))
        lines.append(_verdict(gts, "specialisation", "specialisation", "higher = readouts specialise on their driver"))
        if has_profile:
            lines.append(_verdict(gts, "profile_contrast", "profile contrast", "higher = u^l carries the profile, u^s less"))
        lines.append(_verdict(gts, "topic_contrast", "topic contrast", "higher = u^s carries the topic, u^l less"))
        lines.append("")
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alpha_by_driver(alphas: Mapping[str, np.ndarray], driver: np.ndarray, path: str | Path, aucs=None):
    """One panel per model: histograms of the positives' α for long- and short-driven test targets."""
    plt = _plt()
    names = [m for m, a in alphas.items() if np.isfinite(a).all()]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.4), squeeze=False)
    for ax, m in zip(axes[0], names):
        a = alphas[m]
        lo, hi = float(a.min()), float(a.max())  # zoom on the α actually used (often a narrow band)
        pad = max(0.02 * (hi - lo), 0.005)
        lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
        for d, lab, col in ((0, "long-driven", "tab:blue"), (1, "short-driven", "tab:orange")):
            sel = driver == d
            if sel.any():
                ax.hist(a[sel], bins=30, range=(lo, hi), density=True, histtype="stepfilled", alpha=0.45, color=col,
                        label=f"{lab} (n={int(sel.sum())}, mean {a[sel].mean():.3f})")
        t = _label(m) + (f"\nα-AUC {aucs[m]:.3f}" if aucs and m in aucs and aucs[m] is not None else "")
        ax.set(title=t, xlabel="α on the positive (weight of the long-term interest)", ylabel="density", xlim=(lo, hi))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_interest_pca(vectors: Mapping[str, Mapping[str, np.ndarray]], path: str | Path):
    """One panel per model: a joint 2-D PCA of u^l (circles) and u^s (crosses), coloured by user; a line
    joins each user's successive u^s."""
    plt = _plt()
    names = list(vectors)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.4 * max(1, len(names)), 4.0), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, m in zip(axes[0], names):
        v = vectors[m]
        n = len(v["u_long"])
        xy, ratio = pca_2d(np.concatenate([v["u_long"], v["u_short"]]))
        users = list(dict.fromkeys(v["user_row"].tolist()))
        for j, u in enumerate(users):
            sel = np.flatnonzero(v["user_row"] == u)
            c = cmap(j % 10)
            ax.scatter(xy[sel, 0], xy[sel, 1], marker="o", s=30, color=c, edgecolor="k", linewidth=0.4)
            ax.scatter(xy[n + sel, 0], xy[n + sel, 1], marker="x", s=34, color=c)
            ax.plot(xy[n + sel, 0], xy[n + sel, 1], color=c, lw=0.6, alpha=0.6)
        ax.set(title=f"{_label(m)}\nPC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%} of variance", xlabel="PC1", ylabel="PC2")
        ax.scatter([], [], marker="o", color="gray", label="u^l (long)")
        ax.scatter([], [], marker="x", color="gray", label="u^s (short)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_counterfactual(results: Mapping[str, Any], models: list[str], path: str | Path):
    """GAUC per counterfactual set: one row per dataset, one column per readout, bars grouped by model."""
    plt = _plt()
    datasets = [d for d in results if not d.startswith("_") and any(m in results[d] for m in models)]
    if not datasets:
        return
    fig, axes = plt.subplots(len(datasets), len(READOUTS), figsize=(4.2 * len(READOUTS), 3.2 * len(datasets)),
                             squeeze=False)
    colors = {"original": "tab:gray", "recent": "tab:blue", "shuffled": "tab:orange"}
    for i, ds in enumerate(datasets):
        present = [m for m in models if m in results[ds]]
        sets = [s for s in SETS if s in results[ds][present[0]]]
        for j, r in enumerate(READOUTS):
            ax = axes[i][j]
            w = 0.8 / len(sets)
            vals = []
            for si, s in enumerate(sets):
                ys = [results[ds][m][s][f"gauc{SUFFIX[r]}"] for m in present]
                vals += ys
                ax.bar(np.arange(len(present)) + (si - (len(sets) - 1) / 2) * w, ys, width=w, color=colors[s],
                       label=SET_LABELS[s])
            ax.set_xticks(range(len(present)), [_label(m) for m in present], fontsize=8)
            finite = [v for v in vals if v is not None and np.isfinite(v)]
            if finite:
                ax.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
            ax.axhline(0.5, color="k", lw=0.6, ls=":")
            ax.set_title(f"{ds}: GAUC, {READOUT_LABELS[r]}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_interest_match(gts: Mapping[str, Mapping[str, float]], ref: Mapping[str, Mapping[str, float]], path: str | Path):
    """Bars: profile ρ and topic MRR of the α = 1 and α = 0 readouts per model, chance dashed."""
    plt = _plt()
    panels = [("profile_rho", "profile ρ (Spearman)"), ("topic_mrr", "topic MRR")]
    panels = [p for p in panels if any(f"{p[0]}_long" in g for g in gts.values())]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    names = list(gts)
    for ax, (key, title) in zip(axes[0], panels):
        for k_, (r, col) in enumerate((("long", "tab:blue"), ("short", "tab:orange"))):
            ax.bar(np.arange(len(names)) + (k_ - 0.5) * 0.38, [gts[m].get(f"{key}_{r}", np.nan) for m in names],
                   width=0.38, color=col, label=READOUT_LABELS[r])
        if key in ref.get("chance", {}):
            ax.axhline(ref["chance"][key], color="k", ls="--", lw=0.8, label="chance")
        if key in ref.get("popularity", {}):
            ax.axhline(ref["popularity"][key], color="gray", ls=":", lw=0.8, label="popularity")
        ax.set_xticks(range(len(names)), [_label(m) for m in names], fontsize=8)
        ax.set_title(title)
        y0, y1 = ax.get_ylim()
        ax.set_ylim(y0, y1 + 0.35 * (y1 - y0))  # room for the legend above the bars
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ================================================================================================
# the pipeline stage
# ================================================================================================
def obtain_model(ctx, dataset: str, name: str, data: PreparedData, seed: int = 0):
    """(model, run folder): the main run `runs/main/<ds>/<name>_seed<seed>` when it exists, else
    (aliases such as clsr_nocon, or any model in tiny mode) trained here into
    `runs/disentanglement/<ds>/<name>_seed<seed>` with the main runs' train params (resumable)."""
    from clsr import pipeline as pl
    from clsr.runs import resolve
    from clsr.train import fit, load_trained

    variant = f"{name}_seed{seed}"
    main = Path(ctx.runs_dir) / "main" / dataset / variant
    if name not in pl.MODEL_ALIASES and (main / "metrics.json").exists() and (main / "best.pt").exists():
        meta = pl.read_json(main / "metrics.json")
        want, got = data.meta.get("content_sha256"), meta.get("config", {}).get("dataset_sha256")
        if want and got and want != got:
            raise RuntimeError(f"{main} was trained on other data (sha256 {got[:12]} vs {want[:12]}): re-run train@{dataset}")
        return load_trained(main, data), main
    if name not in pl.MODEL_ALIASES and not ctx.tiny:
        raise FileNotFoundError(
            f"{main} has no finished run; the disentanglement stage reads the main runs (`dvc repro train`), "
            f"or add {dataset} / {name} to pipeline.datasets / pipeline.models"
        )
    reg, over = pl.MODEL_ALIASES.get(name, (name, {}))
    over = {**over, "train.seed": int(seed)}
    model_cfg, train_cfg = resolve(ctx.params, reg, over)
    run_dir = Path(ctx.runs_dir) / "disentanglement" / dataset / variant
    fit(data, reg, model_cfg, train_cfg, run_dir=run_dir)
    return load_trained(run_dir, data), run_dir


def _clean(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _round(float(obj))
    return obj


def run_stage(ctx, boot_reps: int = 200, n_pca_users: int = 5, per_user: int = 8) -> dict[str, Any]:
    """The `disentanglement` stage: every model × counterfactual set × readout on each dataset of
    pipeline.counterfactual_datasets, the ground truth on pipeline.disentanglement_dataset; writes
    reports/tables/disentanglement.md, reports/metrics/disentanglement.json and
    reports/figures/disentanglement/. Returns the results dict (as written to the JSON)."""
    from clsr import pipeline as pl

    params = ctx.params
    dcfg = dict(params.get("disentanglement") or {})
    recent_k = int(dcfg.get("recent_k", 5))
    shuffle_seed = int(dcfg.get("shuffle_seed", 0))
    models = list(dcfg.get("models") or ["clsr", "clsr_nocon", "slirec"])
    pipe = params.get("pipeline") or {}
    gt_ds = pipe.get("disentanglement_dataset")
    cf_ds = list(pipe.get("counterfactual_datasets") or [])
    datasets = cf_ds + ([gt_ds] if gt_ds and gt_ds not in cf_ds else [])
    train = params.get("train") or {}
    batch_size = int(train.get("eval_batch_size", 500))
    ties = str(train.get("ties", "released"))
    if int(train.get("threads", 0) or 0) > 0:
        torch.set_num_threads(int(train["threads"]))
    settings = {"recent_k": recent_k, "shuffle_seed": shuffle_seed, "models": models,
                "counterfactual_datasets": cf_ds, "disentanglement_dataset": gt_ds, "bootstrap_reps": boot_reps}

    results: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    for ds in datasets:
        data = pl.ensure_prepared(ctx, ds)
        per_model: dict[str, Any] = {}
        truth = None
        if ds == gt_ds:
            prof_path = Path(ctx.prepared_dir) / ds / "user_profiles.parquet"
            profiles = pd.read_parquet(prof_path) if prof_path.exists() else None
            truth = load_truth(data, profiles, "test")
            n_cand = data.candidates["test"].item.shape[1]
            per_model["_reference"] = reference_levels(truth, n_cand)  # {"chance": {...}, "popularity": {...}}
        sets = SETS if ds in cf_ds else ("original",)
        alphas, aucs, vectors = {}, {}, {}
        for name in models:
            model, run_dir = obtain_model(ctx, ds, name, data)
            print(f"[disentanglement] {ds} / {name}: {run_dir}", flush=True)
            cf, raw = counterfactual_eval(model, data, "test", sets, recent_k, shuffle_seed, batch_size, ties)
            entry: dict[str, Any] = dict(cf)
            entry["indices"] = counterfactual_indices(cf)
            entry["run"] = str(Path(run_dir).relative_to(ctx.work)) if Path(run_dir).is_relative_to(ctx.work) else str(run_dir)
            if truth is not None:
                gt, _ = ground_truth_eval(model, data, truth, raw["original"], "test", batch_size, ties, boot_reps)
                entry["ground_truth"] = gt
                alphas[name] = raw["original"]["alpha_pos"]
                aucs[name] = gt.get("alpha_auc")
                vectors[name] = interest_vectors(model, projection_batch(data, n_pca_users, per_user))
            per_model[name] = entry
        results[ds] = per_model
        if truth is not None:
            figures[ds] = {"alphas": alphas, "aucs": aucs, "vectors": vectors, "driver": truth.driver}

    results = _clean(results)
    results_out = {**results, "_settings": _clean(settings)}
    atomic_write_json(Path(ctx.reports_dir) / "metrics" / "disentanglement.json", results_out)
    atomic_write_text(ctx.table("disentanglement.md"), markdown_report(results, settings))
    fig_dir = Path(ctx.reports_dir) / "figures" / "disentanglement"
    fig_dir.mkdir(parents=True, exist_ok=True)
    plot_counterfactual(results, models, fig_dir / "counterfactual_gauc.png")
    for ds, f in figures.items():
        plot_alpha_by_driver(f["alphas"], f["driver"], fig_dir / f"alpha_by_driver_{ds}.png", f["aucs"])
        plot_interest_pca(f["vectors"], fig_dir / f"interest_pca_{ds}.png")
        gts = {m: results[ds][m]["ground_truth"] for m in models if "ground_truth" in results[ds].get(m, {})}
        plot_interest_match(gts, results[ds].get("_reference", {}), fig_dir / f"interest_match_{ds}.png")
    return results_out
