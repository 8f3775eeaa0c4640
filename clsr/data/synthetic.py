"""Source ``synthetic``: interaction logs with planted long- and short-term interests (the ground truth).

CLSR claims to separate a user's stable, long-term interest from the interest of the moment. On real
logs nobody knows which interest drove a click; here every event records it, so the disentanglement
study can measure whether the model's long- and short-term representations follow the right driver.

Generative story (all draws from one ``numpy.random.Generator`` seeded with ``seed``)
-------------------------------------------------------------------------------------
Catalogue.
  * Categories ``1..n_categories`` have a global popularity ``g_c ∝ rank^-category_zipf`` (ranks in
    random order).
  * Items ``1..n_items`` belong to exactly one category each: every category gets one item, the rest
    are assigned with probabilities ``g`` (popular categories have larger catalogues).
  * Inside a category, item ``i`` has popularity ``q_i ∝ rank^-item_zipf`` (Zipf-like, ranks in random
    order, normalised per category).

Users ``1..n_users``.
  * Long-term profile ``θ_u ~ Dirichlet(profile_alpha · 1)`` over categories: a small ``profile_alpha``
    makes it sparse (a handful of categories carry most of the mass). It never changes.
  * Short-term propensity ``p_u ~ Beta(p_short_mean·κ, (1-p_short_mean)·κ)`` with
    ``κ = p_short_concentration`` (``κ = 0``: ``p_u = p_short_mean`` for everyone).
  * Sequence length ``n_u = min_events + round(X)`` with ``X ~ LogNormal`` of mean
    ``mean_events - min_events`` and log-sd ``length_sigma``, capped at ``max_events``.

Events ``j = 1..n_u`` of user ``u``.
  * Short-term topic ``z_j`` (a category): ``z_1 ~ g``; after each event the topic jumps with
    probability ``1/mean_topic_run`` (so a topic lasts a geometric number of events, mean
    ``mean_topic_run``) to a *different* category drawn from ``g`` restricted to ``c ≠ z_j``.
    The topic process is independent of ``θ_u``.
  * Driver ``d_j ~ Bernoulli(p_u)``: 0 = long-term, 1 = short-term.
  * Category ``c_j ~ θ_u`` when ``d_j = 0``; ``c_j = z_j`` when ``d_j = 1``.
  * Item ``i_j ~ q`` restricted to category ``c_j``.
  * Time: events come in sessions whose length is geometric (mean ``mean_session_events``); the gap
    to the previous event is ``1 + floor(Exp(gap_within_s))`` seconds inside a session and
    ``1 + floor(Exp(gap_between_s))`` between sessions, so timestamps strictly increase. The whole
    sequence is placed at a uniform random offset inside ``[start, end]`` (local time at
    ``tz_offset_hours``); a sequence longer than the window has its gaps scaled down to fit. The
    default window is the Taobao one (2017-11-25 .. 2017-12-03 at UTC+8), so the same data also passes
    the raw-Taobao time filter.

Output of `generate`: the interactions table (user, item, category, ts; int64; rows grouped by user in
time order) plus the per-event ground truth ``driver`` (int8, 0 long / 1 short) and ``topic`` (the
current short-term topic, a category id, also on driver-0 events). ``df.attrs`` carries
``user_profiles`` (user, category, weight: θ_u, zero weights omitted) and ``user_params`` (user,
p_short, n_events).

`write_taobao_csv` writes a raw-format ``UserBehavior.csv`` of any size from the same story (sparse
profiles on a few categories, a catalogue sized like Taobao's) plus the noise each raw-Taobao filter
removes: non-pv behaviours, repeated (user, item) pairs, items listed under two categories and
timestamps outside the window. It is what the preprocessing benchmark and the scale tests read.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm  # the plain text bar: tqdm.auto would ask papermill kernels for ipywidgets

from clsr.config import ConfigError, from_dict
from clsr.data.sources import check_interactions
from clsr.data.store import atomic_path
from clsr.data.taobao import window_bounds


@dataclass
class SyntheticOptions:
    """Size and shape of the synthetic log; defaults give ~60k events that prepare in seconds on a laptop."""

    seed: int = 0  # every draw comes from numpy.random.default_rng(seed)
    n_users: int = 1_000
    n_items: int = 2_000
    n_categories: int = 20
    mean_events: float = 60.0  # mean events per user (min_events included)
    min_events: int = 10  # shortest sequence (the protocol needs some history for every user)
    max_events: int = 600  # longest sequence (caps the log-normal tail)
    length_sigma: float = 0.6  # log-sd of the log-normal part of the lengths (0 = all equal)
    item_zipf: float = 1.0  # within-category popularity exponent: q ∝ rank^-item_zipf (0 = uniform)
    category_zipf: float = 0.7  # global category popularity exponent (catalogue sizes, topic draws)
    profile_alpha: float = 0.1  # Dirichlet concentration of long-term profiles (small = few categories)
    p_short_mean: float = 0.5  # mean probability that an event is driven by the short-term topic
    p_short_concentration: float = 10.0  # κ of the per-user Beta around p_short_mean (0 = no spread)
    mean_topic_run: float = 8.0  # mean number of events a short-term topic lasts (geometric)
    mean_session_events: float = 10.0  # mean events per session (geometric)
    gap_within_s: float = 60.0  # mean gap between events of a session, seconds
    gap_between_s: float = 43_200.0  # mean gap between sessions, seconds (12 h)
    tz_offset_hours: float = 8.0  # start/end are local times at UTC+tz_offset_hours
    start: str = "2017-11-25 00:00:00"  # earliest timestamp (inclusive)
    end: str = "2017-12-03 23:59:59"  # latest timestamp (inclusive)

    def validate(self, where: str) -> None:
        for key in ("n_users", "n_items", "min_events"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} must be >= 1")
        if self.n_categories < 2:
            raise ConfigError(f"{where}.n_categories: {self.n_categories} must be >= 2 (topics jump between categories)")
        if self.n_items < self.n_categories:
            raise ConfigError(f"{where}.n_items: {self.n_items} must be >= n_categories ({self.n_categories})")
        if not self.min_events <= self.mean_events <= self.max_events:
            raise ConfigError(
                f"{where}: need min_events <= mean_events <= max_events, got "
                f"{self.min_events}, {self.mean_events}, {self.max_events}"
            )
        if not 0.0 <= self.p_short_mean <= 1.0:
            raise ConfigError(f"{where}.p_short_mean: {self.p_short_mean} must be in [0, 1]")
        for key in ("length_sigma", "item_zipf", "category_zipf", "p_short_concentration"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} must be >= 0")
        if self.profile_alpha <= 0:
            raise ConfigError(f"{where}.profile_alpha: {self.profile_alpha} must be > 0")
        for key in ("mean_topic_run", "mean_session_events"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} must be >= 1 (a mean number of events)")
        for key in ("gap_within_s", "gap_between_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} must be > 0")
        lo, hi = window_bounds(self.start, self.end, self.tz_offset_hours, where)
        if hi - lo < self.max_events:
            raise ConfigError(f"{where}: the window {self.start} .. {self.end} is shorter than max_events seconds")


# ------------------------------------------------------------------------------------------------
# building blocks (vectorised over all events; shared by generate and write_taobao_csv)
# ------------------------------------------------------------------------------------------------
def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ∝ rank^-exponent over n entries, ranks in random order."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(w / w.sum())


@dataclass
class Catalogue:
    """Items grouped by category: item_of[cat_ptr[c]:cat_ptr[c+1]] are category c's items, cum_q their CDF."""

    g: np.ndarray  # (C,) global category popularity
    item_cat: np.ndarray  # (I,) category index of each item index
    item_of: np.ndarray  # (I,) item indices grouped by category, most popular first within each category
    cat_ptr: np.ndarray  # (C+1,) CSR offsets into item_of
    cum_q: np.ndarray  # (I,) within-category CDF, aligned with item_of; ends at 1 in each category
    shifted: np.ndarray  # (I,) cum_q + category index (see _shift_cdf), kept for sampling

    @classmethod
    def build(cls, n_items: int, n_categories: int, item_zipf: float, category_zipf: float, rng) -> "Catalogue":
        g = zipf_weights(n_categories, category_zipf, rng)
        item_cat = np.concatenate([np.arange(n_categories), rng.choice(n_categories, n_items - n_categories, p=g)])
        item_cat = rng.permutation(item_cat)
        # group by category in a random order inside each category: that order is the popularity rank
        shuffled = rng.permutation(n_items)
        item_of = shuffled[np.argsort(item_cat[shuffled], kind="stable")]
        sizes = np.bincount(item_cat, minlength=n_categories)
        cat_ptr = np.zeros(n_categories + 1, np.int64)
        np.cumsum(sizes, out=cat_ptr[1:])
        rank = np.arange(n_items) - np.repeat(cat_ptr[:-1], sizes) + 1
        cum_q = _segment_cdf(rank.astype(np.float64) ** -item_zipf, cat_ptr)
        shifted = _shift_cdf(cum_q, cat_ptr)
        return cls(g=g, item_cat=item_cat, item_of=item_of, cat_ptr=cat_ptr, cum_q=cum_q, shifted=shifted)

    def sample_items(self, cats: np.ndarray, rng) -> np.ndarray:
        """One item index per entry of `cats` (category indices), by within-category popularity."""
        return self.item_of[_segment_sample(self.shifted, self.cat_ptr, cats, rng)]


def _segment_cdf(w: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Per-segment normalised cumulative sums of w (each segment's last entry is 1)."""
    seg = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    total = np.add.reduceat(w, ptr[:-1][np.diff(ptr) > 0]) if len(w) else w
    tot = np.zeros(len(ptr) - 1)
    tot[np.diff(ptr) > 0] = total
    cs = np.cumsum(w)
    before = np.concatenate([[0.0], cs])[ptr[:-1]]
    cdf = (cs - before[seg]) / tot[seg]
    cdf[ptr[1:][np.diff(ptr) > 0] - 1] = 1.0  # exact 1 at each segment's end
    return cdf


def _shift_cdf(cdf: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Segment s's CDF plus s: one increasing array, so one searchsorted serves draws from every segment."""
    return cdf + np.repeat(np.arange(len(ptr) - 1, dtype=np.float64), np.diff(ptr))


def _segment_sample(shifted: np.ndarray, ptr: np.ndarray, seg: np.ndarray, rng) -> np.ndarray:
    """For each entry of `seg`, a position in ptr[seg]..ptr[seg+1]-1 drawn by that segment's CDF.

    `shifted` is `_shift_cdf` of the per-segment CDFs.
    """
    x = seg + rng.random(len(seg))
    order = np.argsort(x)  # sorted queries walk `shifted` in order: ~4x faster than random probes
    pos = np.empty(len(x), np.int64)
    pos[order] = np.searchsorted(shifted, x[order], side="right")
    return np.clip(pos, ptr[seg], ptr[seg + 1] - 1)


def _topics(first: np.ndarray, jump_at: np.ndarray, g: np.ndarray, rng) -> np.ndarray:
    """Short-term topic of every event: a Markov chain per user that jumps to a different category.

    `first` marks each user's first event, `jump_at` the events at which the topic changes. Every topic
    segment gets one uniform r; its topic is the inverse CDF at r of g (first segment of a user) or of g
    without the previous topic. The sequential chain is solved by a vectorised fixed-point iteration:
    after t rounds the first t segments of every user are exact, and it stops when nothing changes.
    """
    starts = first | jump_at
    seg_first = first[starts]
    n_seg = len(seg_first)
    r = rng.random(n_seg)
    cum = np.cumsum(g)
    cum[-1] = 1.0
    z = np.minimum(np.searchsorted(cum, r, side="right"), len(g) - 1)
    later = np.flatnonzero(~seg_first)
    before = np.concatenate([[0.0], cum])  # before[c] = mass of categories < c
    while later.size:
        prev = z[later - 1]
        x = r[later] * (1.0 - g[prev])
        x = np.where(x < before[prev], x, x + g[prev])  # skip prev's interval of the CDF
        new = np.minimum(np.searchsorted(cum, x, side="right"), len(g) - 1)
        new = np.where(new == prev, (prev + 1) % len(g), new)  # guards rounding at interval edges
        changed = new != z[later]
        if not changed.any():
            break
        z[later] = new
    seg_id = np.cumsum(starts) - 1
    return z[seg_id]


def simulate(
    rng: np.random.Generator,
    lengths: np.ndarray,
    prof_ptr: np.ndarray,
    prof_cat: np.ndarray,
    prof_w: np.ndarray,
    p_short: np.ndarray,
    cat: Catalogue,
    *,
    mean_topic_run: float,
    mean_session_events: float,
    gap_within_s: float,
    gap_between_s: float,
    lo: int,
    hi: int,
) -> dict[str, np.ndarray]:
    """Events of users 0..len(lengths)-1 (grouped by user, in time order) by the module's story.

    Profiles are CSR: user u's long-term categories are prof_cat[prof_ptr[u]:prof_ptr[u+1]] with
    positive weights prof_w (normalised per user here). `lo`/`hi` bound the timestamps (inclusive).
    Returns 0-based index arrays: user, item, category, topic, driver (int8), and ts (Unix seconds).
    """
    n_users = len(lengths)
    n = int(lengths.sum())
    user = np.repeat(np.arange(n_users), lengths)
    ptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(lengths, out=ptr[1:])
    pos = np.arange(n) - ptr[user]
    first = pos == 0

    topic = _topics(first, rng.random(n) < 1.0 / mean_topic_run, cat.g, rng)
    driver = (rng.random(n) < p_short[user]).astype(np.int8)
    category = topic.copy()
    long_rows = np.flatnonzero(driver == 0)
    prof_cdf = _shift_cdf(_segment_cdf(prof_w, prof_ptr), prof_ptr)
    category[long_rows] = prof_cat[_segment_sample(prof_cdf, prof_ptr, user[long_rows], rng)]
    item = cat.sample_items(category, rng)

    # time: sessions with short gaps inside, long gaps between; integer seconds, strictly increasing
    new_session = rng.random(n) < 1.0 / mean_session_events
    gap = rng.exponential(1.0, n) * np.where(new_session, gap_between_s, gap_within_s)
    gap[first] = 0.0
    raw_span = np.add.reduceat(gap, ptr[:-1])
    budget = (hi - lo) - (lengths - 1)  # seconds left after the one-second minimum per gap
    scale = np.minimum(1.0, budget / np.maximum(raw_span, 1e-12))
    step = np.floor(gap * scale[user]).astype(np.int64) + 1
    step[first] = 0
    rel = np.cumsum(step)
    rel -= rel[ptr[:-1]][user]
    span = rel[ptr[1:] - 1]
    start = lo + np.floor(rng.random(n_users) * (hi - lo - span + 1)).astype(np.int64)
    ts = start[user] + rel
    return {"user": user, "item": item, "category": category, "topic": topic, "driver": driver, "ts": ts}


def _lengths(rng, n_users: int, mean_events: float, min_events: int, max_events: int, sigma: float) -> np.ndarray:
    extra = mean_events - min_events
    if extra <= 0:
        return np.full(n_users, min_events, np.int64)
    mu = math.log(extra) - sigma**2 / 2  # E[LogNormal(mu, sigma)] = extra
    x = np.rint(rng.lognormal(mu, sigma, n_users)).astype(np.int64)
    return np.minimum(min_events + x, max_events)


# ------------------------------------------------------------------------------------------------
def generate(options: SyntheticOptions | dict | None = None) -> pd.DataFrame:
    """The synthetic interactions table with ground truth (see the module docstring)."""
    o = options if isinstance(options, SyntheticOptions) else from_dict(SyntheticOptions, options, "source(synthetic)")
    rng = np.random.default_rng(o.seed)
    lo, hi = window_bounds(o.start, o.end, o.tz_offset_hours)
    cat = Catalogue.build(o.n_items, o.n_categories, o.item_zipf, o.category_zipf, rng)
    theta = rng.dirichlet(np.full(o.n_categories, o.profile_alpha), size=o.n_users)
    if o.p_short_concentration > 0 and 0 < o.p_short_mean < 1:
        k = o.p_short_concentration
        p_short = rng.beta(o.p_short_mean * k, (1 - o.p_short_mean) * k, o.n_users)
    else:
        p_short = np.full(o.n_users, o.p_short_mean)
    lengths = _lengths(rng, o.n_users, o.mean_events, o.min_events, o.max_events, o.length_sigma)
    nz_u, nz_c = np.nonzero(theta > 0)
    prof_ptr = np.zeros(o.n_users + 1, np.int64)
    np.cumsum(np.bincount(nz_u, minlength=o.n_users), out=prof_ptr[1:])
    ev = simulate(
        rng, lengths, prof_ptr, nz_c, theta[nz_u, nz_c], p_short, cat,
        mean_topic_run=o.mean_topic_run, mean_session_events=o.mean_session_events,
        gap_within_s=o.gap_within_s, gap_between_s=o.gap_between_s, lo=lo, hi=hi,
    )
    df = pd.DataFrame(
        {
            "user": ev["user"].astype(np.int64) + 1,
            "item": ev["item"].astype(np.int64) + 1,
            "category": ev["category"].astype(np.int64) + 1,
            "ts": ev["ts"].astype(np.int64),
            "driver": ev["driver"],
            "topic": ev["topic"].astype(np.int64) + 1,
        }
    )
    df = check_interactions(df, "synthetic")
    df.attrs["user_profiles"] = pd.DataFrame(
        {"user": nz_u.astype(np.int64) + 1, "category": nz_c.astype(np.int64) + 1, "weight": theta[nz_u, nz_c]}
    )
    df.attrs["user_params"] = pd.DataFrame(
        {"user": np.arange(1, o.n_users + 1, dtype=np.int64), "p_short": p_short, "n_events": lengths}
    )
    df.attrs["source_files"] = {}
    df.attrs["generator"] = asdict(o)
    return df


def load_synthetic(options: dict, raw_dir: Path) -> pd.DataFrame:
    """The ``synthetic`` source: `generate` with the params.yaml options (nothing is read from raw_dir)."""
    return generate(from_dict(SyntheticOptions, options, "source(synthetic)"))


# ------------------------------------------------------------------------------------------------
# raw Taobao-format CSV of any size
# ------------------------------------------------------------------------------------------------
BEHAVIORS = ("pv", "cart", "fav", "buy")


def _chunk_lengths(rng, m: int, events_per_user: float) -> np.ndarray:
    """Log-normal user lengths (>= 1, log-sd 1) adding up to exactly m rows; the last user is cut short."""
    parts: list[np.ndarray] = []
    total = 0
    while total < m:
        more = _lengths(rng, int((m - total) / events_per_user * 1.2) + 2, events_per_user, 1, 20 * int(events_per_user) + 1, 1.0)
        parts.append(more)
        total += int(more.sum())
    lengths = np.concatenate(parts)
    cut = int(np.searchsorted(np.cumsum(lengths), m))  # first user at which the running total reaches m
    lengths = lengths[: cut + 1].copy()
    lengths[-1] -= int(lengths.sum()) - m
    return lengths


def write_taobao_csv(
    path: str | Path,
    n_rows: int,
    seed: int = 0,
    chunk_rows: int = 5_000_000,
    *,
    events_per_user: float = 100.0,
    rows_per_item: float = 24.0,
    rows_per_category: float = 10_000.0,
    behavior_p: tuple[float, float, float, float] = (0.895, 0.055, 0.029, 0.021),
    revisit_share: float = 0.05,
    two_category_item_share: float = 0.005,
    out_of_window_share: float = 0.01,
    progress: bool = True,
) -> Path:
    """Write a raw ``UserBehavior.csv`` (no header: user,item,category,behavior,ts) of exactly `n_rows` rows.

    Rows come from the module's story with Taobao-like proportions (defaults: ~100 events per user,
    ~24 rows per item, ~10k rows per category, like the real log's 100M rows / 988k users / 4.2M items /
    9.4k categories); each user holds 1-8 long-term categories. Noise for the raw-Taobao filters:
    `behavior_p` = shares of pv/cart/fav/buy; `revisit_share` of events repeat an item the user saw
    before (beyond the repeats the popularity model makes itself); `two_category_item_share` of the
    items are listed under a second category on half of their rows; `out_of_window_share` of rows get a
    timestamp outside the Taobao window (days before/after, a few far off). Users are written in
    id order, events in time order except for the shifted timestamps.

    Memory is bounded by `chunk_rows` (each chunk is generated and written on its own) plus the
    catalogue; the file appears atomically (written to a temporary name, then renamed).
    """
    if n_rows < 1 or chunk_rows < 1:
        raise ValueError(f"write_taobao_csv: n_rows ({n_rows}) and chunk_rows ({chunk_rows}) must be >= 1")
    if abs(sum(behavior_p) - 1.0) > 1e-9 or len(behavior_p) != len(BEHAVIORS):
        raise ValueError(f"write_taobao_csv: behavior_p {behavior_p} must be {len(BEHAVIORS)} shares summing to 1")
    path = Path(path)
    rng = np.random.default_rng(seed)
    lo, hi = window_bounds("2017-11-25 00:00:00", "2017-12-03 23:59:59", 8)
    n_items = max(100, int(n_rows / rows_per_item))
    n_cats = max(10, min(n_items // 2, int(n_rows / rows_per_category)))
    cat = Catalogue.build(n_items, n_cats, item_zipf=1.0, category_zipf=0.8, rng=rng)
    item_ids = rng.permutation(np.arange(1, int(n_items * 1.25) + 1))[:n_items]  # sparse ids like the real log
    cat_ids = rng.choice(np.arange(1, 5_200_000), size=n_cats, replace=False)
    is_two = rng.random(n_items) < two_category_item_share
    alt_cat = (cat.item_cat + 1 + rng.integers(0, n_cats - 1, n_items)) % n_cats  # differs from item_cat

    schema = pa.schema(
        [("user", pa.int64()), ("item", pa.int64()), ("category", pa.int64()),
         ("behavior", pa.dictionary(pa.int8(), pa.string())), ("ts", pa.int64())]
    )
    behaviors = pa.array(BEHAVIORS)
    next_user = 1
    written = 0
    with atomic_path(path, suffix=".part") as tmp:
        with pacsv.CSVWriter(str(tmp), schema, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none")) as w, \
                tqdm(total=n_rows, unit="row", unit_scale=True, mininterval=1, desc=path.name, disable=not progress) as bar:
            while written < n_rows:
                m = min(chunk_rows, n_rows - written)
                lengths = _chunk_lengths(rng, m, events_per_user)
                u = len(lengths)
                k = 1 + np.minimum(rng.poisson(2.0, u), 7)  # long-term categories per user
                prof_ptr = np.zeros(u + 1, np.int64)
                np.cumsum(k, out=prof_ptr[1:])
                prof_cat = rng.choice(n_cats, size=int(k.sum()), p=cat.g)
                prof_w = rng.gamma(0.5, 1.0, int(k.sum())) + 1e-9
                p_short = rng.beta(2.0, 2.0, u)
                ev = simulate(
                    rng, lengths, prof_ptr, prof_cat, prof_w, p_short, cat,
                    mean_topic_run=8.0, mean_session_events=15.0, gap_within_s=90.0, gap_between_s=86_400.0,
                    lo=lo, hi=hi,
                )
                item, category, ts = ev["item"], ev["category"], ev["ts"]
                # revisits: copy the item of an earlier event of the same user
                ptr = np.zeros(u + 1, np.int64)
                np.cumsum(lengths, out=ptr[1:])
                pos = np.arange(m) - ptr[ev["user"]]
                rev = np.flatnonzero((rng.random(m) < revisit_share) & (pos > 0))
                src = ptr[ev["user"][rev]] + np.floor(rng.random(len(rev)) * pos[rev]).astype(np.int64)
                item[rev] = item[src]
                category = cat.item_cat[item]
                # items listed under two categories: half their rows show the other one
                flip = is_two[item] & (rng.random(m) < 0.5)
                category = np.where(flip, alt_cat[item], category)
                # timestamps outside the window: a few days off, and a handful far off
                out = np.flatnonzero(rng.random(m) < out_of_window_share)
                shift = rng.integers(1, 5 * 86_400, len(out))
                far = rng.random(len(out)) < 0.05
                shift = np.where(far, rng.integers(86_400 * 365, 86_400 * 3650, len(out)), shift)
                ts = ts.copy()
                ts[out] = np.where(rng.random(len(out)) < 0.5, lo - shift, hi + shift)
                beh = rng.choice(len(BEHAVIORS), size=m, p=np.asarray(behavior_p)).astype(np.int8)
                table = pa.table(
                    [
                        pa.array(ev["user"].astype(np.int64) + next_user),
                        pa.array(item_ids[item]),
                        pa.array(cat_ids[category].astype(np.int64)),
                        pa.DictionaryArray.from_arrays(pa.array(beh), behaviors),
                        pa.array(ts.astype(np.int64)),
                    ],
                    schema=schema,
                )
                w.write_table(table)
                next_user += u
                written += m
                bar.update(m)
    return path


def _main(argv: list[str] | None = None) -> None:
    """`python -m clsr.data.synthetic taobao-csv PATH N_ROWS [--seed S]`: write a raw-format test log."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m clsr.data.synthetic", description=_main.__doc__)
    ap.add_argument("path")
    ap.add_argument("n_rows", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-rows", type=int, default=5_000_000)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    write_taobao_csv(a.path, a.n_rows, a.seed, a.chunk_rows)
    print(f"wrote {a.n_rows} rows to {a.path} in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    _main()
