"""The disentanglement study (clsr.disentangle): counterfactual transforms, ground-truth measures that
can fail, the per-user values and paired verdicts over seeds, the stage over several seeds, the one scoring
function (clsr.scoring) and CLSR's evaluation-time `alpha_override`."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from clsr import metrics as M
from clsr import pipeline as pl
from clsr.data import batches as B
from clsr.data.batches import Batch
from clsr.data.prepare import prepare
from clsr.data.synthetic import SyntheticOptions, generate
from clsr.disentangle import measures, verdicts
from clsr.disentangle.counterfactual import SETS, counterfactual_batches, shuffle_keys, splitmix64
from clsr.disentangle.evaluate import (counterfactual_eval, counterfactual_users, ground_truth_eval,
                                      ground_truth_instances)
from clsr.disentangle.truth import Truth, load_truth
from clsr.models.base import ModelSizes
from clsr.models.clsr import CLSR, CLSRConfig
from clsr.params import check
from clsr.scoring import AS_TRAINED, score_batches
from clsr.stages import disentanglement as stage
from clsr.train import data_settings

torch.set_num_threads(1)

K_RECENT = 5


# ------------------------------------------------------------------------------------------------
# a small synthetic dataset with ground truth
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """(PreparedData, user_profiles table) of a small synthetic log prepared as the pipeline does."""
    tmp = tmp_path_factory.mktemp("syn")
    df = generate(SyntheticOptions(n_users=200, n_items=160, n_categories=8, mean_events=25, seed=3))
    params = {"datasets": {"syn": {"source": {"name": "synthetic"}, "protocol": {
        "split": "per_user", "valid_negatives": 4, "test_negatives": 19, "max_len": 20, "seed": 0}}}}
    data = prepare("syn", params, raw_dir=tmp / "raw", out_dir=tmp / "prepared", interactions=df)
    profiles = pd.read_parquet(tmp / "prepared" / "syn" / "user_profiles.parquet")
    return data, profiles


@pytest.fixture(scope="module")
def truth(syn):
    data, profiles = syn
    return load_truth(data, profiles, "test")


def _all(batches) -> dict[str, torch.Tensor]:
    bs = list(batches)
    return {f: torch.cat([getattr(b, f) for b in bs]) for f in Batch.__dataclass_fields__}


# ------------------------------------------------------------------------------------------------
# counterfactual transforms
# ------------------------------------------------------------------------------------------------
def test_counterfactual_sets_keep_candidates_and_identity(syn):
    data, _ = syn
    orig = _all(counterfactual_batches(data, "original", batch_size=37))
    for kind in ("recent", "shuffled"):
        cf = _all(counterfactual_batches(data, kind, batch_size=37, recent_k=K_RECENT, shuffle_seed=0))
        for f in ("cand_item", "cand_cate", "user", "user_row", "instance"):
            assert torch.equal(cf[f], orig[f]), (kind, f)
    assert torch.equal(orig["instance"], torch.arange(len(data.instances["test"])))


def test_recent_only_changes_only_long_histories(syn):
    data, _ = syn
    max_len, r = data_settings(data)
    orig = _all(counterfactual_batches(data, "original", batch_size=50))
    rec = _all(counterfactual_batches(data, "recent", batch_size=50, recent_k=K_RECENT))
    inst = data.instances["test"]
    short = orig["length"] <= K_RECENT
    long_ = ~short
    assert long_.sum() > 10
    fields = ("hist_item", "hist_cate", "mask", "length", "time_to_now", "time_from_first")
    for f in fields:  # histories of at most k events: untouched
        assert torch.equal(rec[f][short], orig[f][short]), f
    assert (rec["length"][long_] == K_RECENT).all()
    assert (rec["mask"][long_].sum(1) == K_RECENT).all()
    for i in torch.nonzero(long_).flatten().tolist():
        n = int(orig["length"][i])
        # the same last k events, with their time to the target unchanged
        for f in ("hist_item", "hist_cate", "time_to_now"):
            assert torch.equal(rec[f][i, :K_RECENT], orig[f][i, n - K_RECENT:n]), f
            assert (rec[f][i, K_RECENT:] == 0).all()
        # time since the first event: recomputed from the first *kept* event (docs/protocol.md §10)
        start = data.user_offsets[inst.user[i]]
        target = start + inst.pos[i]
        kept = np.arange(target - K_RECENT, target)
        t0 = data.event_ts[kept[0]]
        nxt = np.append(kept[1:], target)
        expect = np.log(np.maximum((data.event_ts[nxt] - t0) / r, B.TIME_CLAMP)).astype(np.float32)
        np.testing.assert_allclose(rec["time_from_first"][i, :K_RECENT].numpy(), expect, rtol=1e-6)
    # the counterfactual does change something for those rows
    assert not torch.equal(rec["time_from_first"][long_], orig["time_from_first"][long_])


def test_shuffle_permutes_pairs_only_and_is_batch_independent(syn):
    data, _ = syn
    orig = _all(counterfactual_batches(data, "original", batch_size=1000))
    sh_a = _all(counterfactual_batches(data, "shuffled", batch_size=7, shuffle_seed=11))
    sh_b = _all(counterfactual_batches(data, "shuffled", batch_size=1000, shuffle_seed=11))
    sh_c = _all(counterfactual_batches(data, "shuffled", batch_size=1000, shuffle_seed=12))
    for f in Batch.__dataclass_fields__:  # a function of (seed, instance), not of the batching
        assert torch.equal(sh_a[f], sh_b[f]), f
    for f in ("mask", "length", "time_to_now", "time_from_first", "user", "cand_item", "cand_cate"):
        assert torch.equal(sh_a[f], orig[f]), f  # timestamps and time features stay in place
    changed = 0
    for i in range(len(orig["length"])):
        n = int(orig["length"][i])
        pairs_o = sorted(zip(orig["hist_item"][i, :n].tolist(), orig["hist_cate"][i, :n].tolist()))
        pairs_s = sorted(zip(sh_a["hist_item"][i, :n].tolist(), sh_a["hist_cate"][i, :n].tolist()))
        assert pairs_o == pairs_s  # the same (item, category) multiset: pairs stay together
        assert (sh_a["hist_item"][i, n:] == 0).all() and (sh_a["hist_cate"][i, n:] == 0).all()
        changed += not torch.equal(sh_a["hist_item"][i, :n], orig["hist_item"][i, :n])
    assert changed > 0.8 * len(orig["length"])
    assert not torch.equal(sh_c["hist_item"], sh_a["hist_item"])  # another seed, another permutation


def test_shuffle_keys_uniform_and_deterministic():
    k1 = shuffle_keys(0, np.arange(2000), 30)
    k2 = shuffle_keys(0, np.arange(2000)[::-1].copy(), 30)[::-1]
    assert np.array_equal(k1, k2)
    assert (k1 >= 0).all() and (k1 < 1).all()
    assert abs(k1.mean() - 0.5) < 0.01 and abs(k1.std() - np.sqrt(1 / 12)) < 0.01
    # the rank of position 0 is uniform over positions (no positional bias in the permutation)
    first = np.argsort(k1, axis=1)[:, 0]
    counts = np.bincount(first, minlength=30)
    assert counts.min() > 30 and counts.max() < 110
    with pytest.raises(ValueError):
        shuffle_keys(0, np.array([-1]), 3)


# ------------------------------------------------------------------------------------------------
# fake models: the measures must be able to fail
# ------------------------------------------------------------------------------------------------
def _hash01(*arrays: torch.Tensor) -> torch.Tensor:
    x = np.zeros(np.broadcast_shapes(*[a.shape for a in arrays]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in arrays:
            x = splitmix64(x ^ np.broadcast_to(a.cpu().numpy().astype(np.uint64), x.shape))
    return torch.from_numpy((x >> np.uint64(11)).astype(np.float64) / 2.0**53)


class Entangled(nn.Module):
    """One shared representation (the history's category histogram) feeds both 'interests'; α fixed 0.5.
    It fits the data (it ranks categories the user visited), but u^l = u^s."""

    def __init__(self, n_cates: int):
        super().__init__()
        self.n_cates = n_cates

    def forward(self, batch: Batch, alpha_override=None):
        h = torch.zeros(batch.size, self.n_cates, dtype=torch.float64)
        h.scatter_add_(1, batch.hist_cate, batch.mask.double())
        h = h / batch.mask.sum(1, keepdim=True).clamp(min=1)
        u = h.gather(1, batch.cand_cate)
        logits = 0.5 * u + 0.5 * u  # α u^l + (1 − α) u^s with u^l = u^s
        a = 0.5 if alpha_override is None else float(alpha_override)
        return {"logits": logits, "alpha": torch.full_like(logits, a)}


class Random(nn.Module):
    """Scores and α independent of everything that matters."""

    def forward(self, batch: Batch, alpha_override=None):
        logits = _hash01(batch.instance[:, None], batch.cand_item, torch.tensor(0 if alpha_override is None else 1 + int(alpha_override)))
        a = _hash01(batch.instance[:, None], batch.cand_item, torch.tensor(99)) if alpha_override is None else torch.full_like(logits, float(alpha_override))
        return {"logits": logits, "alpha": a}


class Oracle(nn.Module):
    """Knows the truth: u^l scores a candidate by the user's profile weight of its category, u^s by
    whether its category is the current topic, and α = 1 − driver."""

    def __init__(self, data, truth: Truth):
        super().__init__()
        pos = np.full(data.cate_vocab_size, -1, np.int64)
        pos[data.cate_index[truth.cats]] = np.arange(len(truth.cats))
        self.pos = torch.from_numpy(pos)
        self.theta = torch.from_numpy(truth.theta)
        self.topic = torch.from_numpy(truth.topic)
        self.driver = torch.from_numpy(truth.driver)

    def forward(self, batch: Batch, alpha_override=None):
        p = self.pos[batch.cand_cate]
        inst = batch.instance
        th = self.theta[inst]
        long_ = torch.where(p >= 0, th.gather(1, p.clamp(min=0)), torch.zeros_like(th[:, :1]).expand_as(p))
        short = ((p == self.topic[inst][:, None]) & (p >= 0)).double()
        if alpha_override is None:
            a = (1.0 - self.driver[inst].double())[:, None].expand_as(long_)
        else:
            a = torch.full_like(long_, float(alpha_override))
        return {"logits": a * long_ + (1 - a) * short, "alpha": a}


def _evaluate(model, data, truth, reps=50):
    cf, raw = counterfactual_eval(model, data, "test", SETS, K_RECENT, 0, batch_size=64)
    gt, _ = ground_truth_eval(model, data, truth, raw["original"], batch_size=64, reps=reps)
    return cf, measures.counterfactual_indices(cf), gt


def test_truth_is_aligned_with_the_data(syn, truth):
    data, profiles = syn
    n = len(data.instances["test"])
    assert truth.driver.shape == (n,) and set(np.unique(truth.driver)) <= {0, 1}
    assert 0.2 < truth.driver.mean() < 0.8
    # a short-driven target's category is the topic in force
    target = data.target_event("test")
    cat_pos = {c: i for i, c in enumerate(truth.cats.tolist())}
    tgt_cat = np.array([cat_pos.get(c, -2) for c in data.event_cate[target].tolist()])
    sd = truth.driver == 1
    assert np.array_equal(tgt_cat[sd], truth.topic[sd])
    # profiles: rows of θ sum to (almost) 1 and long-driven targets fall in the profile's support
    assert np.allclose(truth.theta.sum(1), 1.0, atol=1e-6)
    ld = np.flatnonzero(truth.driver == 0)
    assert (truth.theta[ld, tgt_cat[ld]] > 0).all()
    # representative items belong to their category
    item_cat = pd.Series(data.event_cate, index=data.event_item).groupby(level=0).first()
    assert np.array_equal(item_cat.loc[truth.rep_items].to_numpy(), truth.cats)


def test_entangled_model_scores_chance_on_disentanglement(syn, truth):
    data, _ = syn
    cf, idx, gt = _evaluate(Entangled(data.cate_vocab_size), data, truth)
    assert gt["alpha_auc"] == 0.5
    assert gt["specialisation"] == 0.0
    assert gt["profile_contrast"] == 0.0 and gt["topic_contrast"] == 0.0
    assert idx["recent_gap"] == 0.0 and idx["shuffle_gap"] == 0.0
    # it is a sensible recommender all the same: the measures do not just reward failing to fit
    assert cf["original"]["gauc"] > 0.6
    # an order-free model is untouched by shuffling (the transform keeps each history's multiset)
    assert cf["shuffled"]["gauc"] == cf["original"]["gauc"]


def test_random_model_scores_near_chance(syn, truth):
    data, _ = syn
    cf, _, gt = _evaluate(Random(), data, truth)
    ref = measures.reference_levels(truth, data.candidates["test"].item.shape[1])["chance"]
    assert abs(gt["alpha_auc"] - 0.5) < 0.1
    assert abs(cf["original"]["gauc"] - 0.5) < 0.05
    for r in ("_long", "_short"):
        assert abs(gt[f"profile_rho{r}"]) < 0.1
        assert abs(gt[f"topic_mrr{r}"] - ref["topic_mrr"]) < 0.08
        assert abs(gt[f"profile_ndcg{r}"] - ref["profile_ndcg"]) < 0.06
    assert abs(gt["specialisation"]) < 0.2  # 4 means of ~100 per-instance AUCs (sd ≈ 0.3): sd of the DiD ≈ 0.06


def test_oracle_model_scores_near_perfect(syn, truth):
    data, _ = syn
    _, _, gt = _evaluate(Oracle(data, truth), data, truth)
    assert gt["alpha_auc"] == 1.0
    assert gt["alpha_auc_lo"] == 1.0
    assert gt["mean_alpha_long_driven"] == 1.0 and gt["mean_alpha_short_driven"] == 0.0
    assert gt["profile_rho_long"] > 0.999
    assert gt["profile_ndcg_long"] > 0.999
    assert gt["topic_mrr_short"] == 1.0
    assert gt["profile_contrast"] > 0.5 and gt["topic_contrast"] > 0.3
    assert gt["specialisation"] > 0.2 and gt["specialisation_lo"] > 0.1
    # each readout is better on its own driver
    assert gt["gauc_long@long_driven"] > gt["gauc_long@short_driven"]
    assert gt["gauc_short@short_driven"] > gt["gauc_short@long_driven"]
    assert gt["gauc_short@short_driven"] > 0.85


def test_known_answers_are_met(truth):
    checks = measures.known_answers(truth)
    assert len(checks) == 4
    for name, (measured, expected) in checks.items():
        assert measured == pytest.approx(expected, abs=1e-12), name


# ------------------------------------------------------------------------------------------------
# per-user / per-instance values and the paired verdicts
# ------------------------------------------------------------------------------------------------
class Windowed(nn.Module):
    """u^l scores a candidate's category by its share of the whole history, u^s by its share of the last 3
    events; α fixed 0.5. Recent-only histories (the last 5) change u^l only, shuffling changes u^s only."""

    def __init__(self, n_cates: int):
        super().__init__()
        self.n_cates = n_cates

    def share(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(batch.size, self.n_cates, dtype=torch.float64)
        h.scatter_add_(1, batch.hist_cate, mask.double())
        return (h / mask.sum(1, keepdim=True).clamp(min=1)).gather(1, batch.cand_cate)

    def forward(self, batch: Batch, alpha_override=None):
        last3 = batch.mask * (torch.arange(batch.mask.shape[1])[None, :] >= (batch.length[:, None] - 3))
        u_long, u_short = self.share(batch, batch.mask), self.share(batch, last3)
        a = 0.5 if alpha_override is None else float(alpha_override)
        return {"logits": a * u_long + (1 - a) * u_short, "alpha": torch.full_like(u_long, a)}


def test_counterfactual_users_average_to_the_indices(syn):
    """The rows-weighted mean of the per-user gaps is the GAUC-based index (the GAUC is the rows-weighted
    mean of the per-user AUCs, and every set holds the same users and candidates)."""
    data, _ = syn
    cf, raw = counterfactual_eval(Windowed(data.cate_vocab_size), data, "test", SETS, K_RECENT, 0, batch_size=64)
    idx = measures.counterfactual_indices(cf)
    assert cf["recent"]["gauc_short"] == cf["original"]["gauc_short"]  # the model is what its docstring says
    assert cf["shuffled"]["gauc_long"] == cf["original"]["gauc_long"]
    assert idx["recent_gap"] != 0 and idx["shuffle_gap"] != 0
    users = counterfactual_users(raw)
    test_users = data.instances["test"].user
    assert len(users["user"]) == len(np.unique(test_users)) and np.all(np.diff(users["user"]) > 0)
    assert np.all(users["rows"] == data.candidates["test"].item.shape[1])  # one test instance per user
    for q in ("recent_gap", "shuffle_gap"):
        assert np.average(users[q], weights=users["rows"]) == pytest.approx(idx[q], abs=1e-12)
    # the α = 0 readout is untouched by recent-only histories: the per-user recent gap is the α = 1 drop alone
    pu = {k: M.per_user_auc(raw[k].logits["long"], raw[k].user)["auc"] for k in ("original", "recent")}
    np.testing.assert_allclose(users["recent_gap"], pu["original"] - pu["recent"], atol=1e-12)


def test_ground_truth_instances_give_the_measures(syn, truth):
    """The per-instance values behind the verdicts reproduce the reported measures."""
    data, _ = syn
    model = Oracle(data, truth)
    gt, scores = ground_truth_eval(model, data, truth, batch_size=64, reps=0)
    inst = ground_truth_instances(scores["original"], scores["categories"], truth)
    n = len(truth.driver)
    assert all(len(v) == n for v in inst.values())
    assert np.array_equal(inst["user"], scores["original"].user) and len(np.unique(inst["user"])) == n  # per-user split
    assert np.array_equal(inst["alpha"], 1.0 - truth.driver)  # the oracle's α knows the driver
    assert M.auc(inst["alpha"], truth.driver == 0) == gt["alpha_auc"] == 1.0
    spec = measures.specialisation(inst["auc_long"], inst["auc_short"], truth.driver)
    assert spec == pytest.approx(gt["specialisation"], abs=1e-12)
    assert np.nanmean(inst["rho_long"] - inst["rho_short"]) == pytest.approx(gt["profile_contrast"], abs=1e-12)
    assert np.nanmean(inst["rr_short"] - inst["rr_long"]) == pytest.approx(gt["topic_contrast"], abs=1e-12)


def _instances(rng, n: int, alpha: np.ndarray, contrast: float) -> dict[str, np.ndarray]:
    """Per-instance values of a constructed model: profile contrast = `contrast` + centred noise."""
    noise = rng.normal(0, 0.1, n)
    noise -= noise.mean()
    return {"user": np.arange(n) + 10, "alpha": alpha, "auc_long": rng.random(n), "auc_short": rng.random(n),
            "rho_long": contrast + noise, "rho_short": np.zeros(n), "rr_long": rng.random(n), "rr_short": rng.random(n)}


def test_ground_truth_comparisons_on_constructed_models():
    """CLSR's α knows the driver (α-AUC 1), model 'weak' has a random α (AUC ≈ 0.5), and its profile contrast is
    0.3 below CLSR's (exactly, on average); model 'copy' is CLSR itself: difference exactly 0, no winner."""
    rng = np.random.default_rng(0)
    n, seeds = 300, (0, 1)
    driver = (rng.random(n) < 0.5).astype(np.int64)
    ref = {s: _instances(rng, n, 1.0 - driver + 0.01 * rng.random(n), 0.5) for s in seeds}
    weak = {s: _instances(rng, n, rng.random(n), 0.2) for s in seeds}
    out = verdicts.ground_truth_comparisons({"clsr": ref, "weak": weak, "copy": copy.deepcopy(ref)}, driver,
                                            replicates=300)
    assert set(out) == {"weak", "copy"}
    a = out["weak"]["alpha_auc"]
    expect = [1.0 - M.auc(weak[s]["alpha"], driver == 0) for s in seeds]
    assert [a["per_seed"][str(s)] for s in seeds] == pytest.approx(expect, abs=1e-12)
    assert a["difference"] == pytest.approx(np.mean(expect), abs=1e-12)
    assert a["low"] > 0 and a["winner"] == "clsr" and a["seeds"] == 2 and a["users"] == n
    assert a["method"] == verdicts.INSTANCES
    p = out["weak"]["profile_contrast"]
    assert p["difference"] == pytest.approx(0.3, abs=1e-12) and p["low"] > 0 and p["winner"] == "clsr"
    assert p["method"] == verdicts.USERS
    for q in ("alpha_auc", "specialisation", "profile_contrast", "topic_contrast"):
        c = out["copy"][q]
        assert (c["difference"], c["low"], c["high"], c["winner"]) == (0.0, 0.0, 0.0, None), q


def test_contrast_comparison_leaves_out_undefined_instances():
    """An instance whose ρ is undefined (a constant score row) for either model in any seed is left out of
    that comparison for every seed and both models."""
    rng = np.random.default_rng(1)
    n = 50
    driver = np.arange(n) % 2
    ref = {0: _instances(rng, n, rng.random(n), 0.4), 1: _instances(rng, n, rng.random(n), 0.4)}
    other = {0: _instances(rng, n, rng.random(n), 0.1), 1: _instances(rng, n, rng.random(n), 0.1)}
    ref[1]["rho_long"][:5] = np.nan
    other[0]["rho_short"][45:] = np.nan
    out = verdicts.ground_truth_comparisons({"clsr": ref, "other": other}, driver, replicates=50)
    c = out["other"]["profile_contrast"]
    keep = np.r_[5:45]
    expect = np.mean([(ref[s]["rho_long"] - ref[s]["rho_short"])[keep].mean()
                      - (other[s]["rho_long"] - other[s]["rho_short"])[keep].mean() for s in (0, 1)])
    assert c["users"] == 40 and c["difference"] == pytest.approx(expect, abs=1e-12)


def test_counterfactual_comparisons_weight_users_by_rows():
    """Per user, CLSR's gap = the other's + 0.1 (recent) and − 0.2 (shuffle): the rows-weighted differences
    are exactly +0.1 and −0.2 in every seed, and the verdicts name CLSR and the other model."""
    rng = np.random.default_rng(2)
    users, rows = np.arange(40) * 3, rng.integers(5, 30, 40)

    def run(shift_recent: float, shift_shuffle: float, base: dict) -> dict:
        return {"user": users, "rows": rows, "recent_gap": base["recent_gap"] + shift_recent,
                "shuffle_gap": base["shuffle_gap"] + shift_shuffle}

    other = {s: {"user": users, "rows": rows, "recent_gap": rng.normal(0, 0.05, 40),
                 "shuffle_gap": rng.normal(0, 0.05, 40)} for s in (0, 1, 2)}
    ref = {s: run(0.1, -0.2, other[s]) for s in other}
    c = verdicts.counterfactual_comparisons({"clsr": ref, "other": other}, replicates=200)["other"]
    assert c["recent_gap"]["difference"] == pytest.approx(0.1, abs=1e-12)
    assert list(c["recent_gap"]["per_seed"].values()) == pytest.approx([0.1] * 3, abs=1e-12)
    assert c["recent_gap"]["winner"] == "clsr" and c["recent_gap"]["seeds"] == 3 and c["recent_gap"]["users"] == 40
    assert c["shuffle_gap"]["difference"] == pytest.approx(-0.2, abs=1e-12) and c["shuffle_gap"]["winner"] == "other"
    assert verdicts.counterfactual_comparisons({"other": other}) == {}  # no CLSR, nothing to compare


# ------------------------------------------------------------------------------------------------
# the stage over several seeds
# ------------------------------------------------------------------------------------------------
def test_required_runs_are_the_aliases_on_every_dataset_and_seed():
    params = {"pipeline": {"seeds": [0, 2], "counterfactual_datasets": ["a", "b"], "disentanglement_dataset": "c"},
              "disentanglement": {"models": ["clsr", "clsr_nocon", "slirec"]}}
    assert stage.required_runs(params) == [(ds, "clsr_nocon", s) for ds in ("a", "b", "c") for s in (0, 2)]
    params["pipeline"]["disentanglement_dataset"] = "b"  # already a counterfactual dataset: not twice
    assert stage.required_runs(params) == [(ds, "clsr_nocon", s) for ds in ("a", "b") for s in (0, 2)]
    params["disentanglement"]["models"] = ["clsr", "slirec"]  # registered models only: the main runs
    assert stage.required_runs(params) == []


def test_seed_mean():
    a = {"x": 1.0, "n": 5, "run": "r0", "g": {"auc": 0.6, "auc_lo": 0.5, "auc_hi": 0.7}, "only_a": 1.0}
    b = {"x": 3.0, "n": 5, "run": "r1", "g": {"auc": 0.8, "auc_lo": 0.7, "auc_hi": 0.9}}
    assert stage.seed_mean([a, b]) == {"x": 2.0, "n": 5, "g": {"auc": pytest.approx(0.7)}}
    assert stage.seed_mean([a]) == {"x": 1.0, "n": 5, "run": "r0", "g": {"auc": 0.6}, "only_a": 1.0}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The stage in tiny mode with two seeds: (context, results as returned)."""
    params = copy.deepcopy(pl.TINY_PARAMS)
    params["pipeline"]["seeds"] = [0, 1]
    ctx = pl.Context(root=pl.find_root(), params=check(params, "tiny"), tiny=True,
                     work=tmp_path_factory.mktemp("study"))
    return ctx, stage.run(ctx, boot_reps=20, verdict_reps=200)


def test_study_holds_every_seed_and_their_mean(study):
    ctx, res = study
    assert json.loads(stage.results_path(ctx).read_text()) == res
    assert res["_settings"]["seeds"] == [0, 1]
    per_model = res["tiny"]
    runs = set()
    for m in ("clsr", "clsr_nocon", "slirec"):
        e = per_model[m]
        assert set(e["seeds"]) == {"0", "1"}
        runs |= {e["seeds"][s]["run"] for s in ("0", "1")}
        for path in (("original", "gauc_long"), ("indices", "recent_gap"), ("ground_truth", "alpha_auc"),
                     ("ground_truth", "specialisation"), ("ceiling", "alpha_vs_posterior", "pearson")):
            vals = []
            for d in [e] + [e["seeds"][s] for s in ("0", "1")]:
                for p in path:
                    d = d[p]
                vals.append(d)
            assert vals[0] == pytest.approx((vals[1] + vals[2]) / 2, abs=2e-4), (m, path)  # JSON rounds to 4 places
        assert "alpha_auc_lo" not in e["ground_truth"] and "alpha_auc_lo" in e["seeds"]["0"]["ground_truth"]
    assert len(runs) == 6  # every model and seed its own run


def test_study_comparisons_are_clsr_minus_each_model_over_the_seeds(study):
    _, res = study
    per_model = res["tiny"]
    comps = per_model["_comparisons"]
    assert set(comps) == {"clsr_nocon", "slirec"}
    for other, qs in comps.items():
        assert set(qs) == set(verdicts.QUANTITIES)
        for q, c in qs.items():
            section = "indices" if q in ("recent_gap", "shuffle_gap") else "ground_truth"
            for s in ("0", "1"):
                expect = per_model["clsr"]["seeds"][s][section][q] - per_model[other]["seeds"][s][section][q]
                tol = 1e-3 if "contrast" in q else 2e-4  # contrasts pair only instances defined for both models
                assert c["per_seed"][s] == pytest.approx(expect, abs=tol), (other, q, s)
            assert c["difference"] == pytest.approx((c["per_seed"]["0"] + c["per_seed"]["1"]) / 2, abs=2e-4)
            assert c["seeds"] == 2 and c["users"] == 60 and c["low"] <= c["high"]
            winner = "clsr" if c["low"] > 0 else other if c["high"] < 0 else None
            assert c["winner"] == winner or (c["low"] == 0 or c["high"] == 0), (other, q)


def test_study_report_states_seeds_and_paired_verdicts(study):
    ctx, res = study
    text = ctx.table("disentanglement.md").read_text()
    assert "seeds 0, 1 of each" in text and "seed 0)" not in text and "overlap" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("- ") and " vs " in ln]
    assert len(lines) == 2 * len(verdicts.QUANTITIES)
    comps = res["tiny"]["_comparisons"]
    for ln in lines:
        assert "(2 seeds, 60 test users)" in ln
        other = "clsr_nocon" if "CLSR w/o contrastive" in ln else "slirec"
        q = next(k for k, (name, _) in verdicts.QUANTITIES.items() if ln.startswith(f"- {name} ("))
        c = comps[other][q]
        if c["winner"] is None:
            assert "no detectable difference" in ln
        else:
            assert f"{'CLSR' if c['winner'] == 'clsr' else ln.split(' vs ')[1].split(':')[0]} higher" in ln
    figs = {p.name for p in stage.figure_dir(ctx).glob("*.png")}
    assert {"counterfactual_gauc.png", "interest_match_tiny.png", "alpha_by_driver_tiny.png"} <= figs


# ------------------------------------------------------------------------------------------------
# one scoring function for training, evaluation and the study
# ------------------------------------------------------------------------------------------------
def test_score_batches_matches_direct_forwards_and_ignores_batching(syn):
    data, _ = syn
    model = Random()
    readouts = {"model": None, "long": 1.0, "short": 0.0}
    small = score_batches(model, counterfactual_batches(data, "original", batch_size=7), readouts, keep=("alpha", "absent"))
    large = score_batches(model, counterfactual_batches(data, "original", batch_size=1000), readouts, keep=("alpha",))
    n = len(data.instances["test"])
    assert np.array_equal(small.instance, np.arange(n)) and np.array_equal(large.instance, small.instance)
    assert set(small.outputs) == {"alpha"}  # an output the model does not return is left out
    for r in readouts:
        assert small.logits[r].shape == (n, data.candidates["test"].item.shape[1])
        assert np.array_equal(small.logits[r], large.logits[r]), r
    assert np.array_equal(small.outputs["alpha"], large.outputs["alpha"])
    # the same numbers as calling the model on each batch by hand
    direct = {r: [] for r in readouts}
    users, alphas = [], []
    for b in counterfactual_batches(data, "original", batch_size=50):
        for r, a in readouts.items():
            direct[r].append((model(b) if a is None else model(b, alpha_override=a))["logits"].numpy())
        alphas.append(model(b)["alpha"].numpy())
        users.append(b.user.numpy())
    for r in readouts:
        np.testing.assert_array_equal(small.logits[r], np.concatenate(direct[r]).astype(np.float32))
    np.testing.assert_array_equal(small.outputs["alpha"], np.concatenate(alphas).astype(np.float32))
    np.testing.assert_array_equal(small.user, np.concatenate(users))
    assert np.array_equal(small.user_row, data.instances["test"].user)


def test_score_batches_keeps_outputs_of_the_as_trained_readout_only():
    m = _clsr()
    b = _batch()
    s = score_batches(m, [b, b], {"long": 1.0, "model": None}, keep=("alpha", "u_long"))
    with torch.no_grad():
        base = m(b)
    np.testing.assert_array_equal(s.outputs["alpha"], np.concatenate([base["alpha"].float().numpy()] * 2))
    assert s.outputs["u_long"].shape == (2 * b.size, base["u_long"].shape[-1])
    assert s.logits["long"].shape == (2 * b.size, b.n_candidates)
    with pytest.raises(ValueError, match="as-trained readout"):
        score_batches(m, [b], {"long": 1.0}, keep=("alpha",))
    assert list(score_batches(m, [b]).logits) == list(AS_TRAINED)


def test_evaluate_is_the_metrics_of_score_batches(syn):
    from clsr import metrics as M
    from clsr.train import TrainConfig, evaluate

    data, _ = syn
    model = Entangled(data.cate_vocab_size)
    cfg = TrainConfig(eval_batch_size=33, ks=[1, 10])
    s = score_batches(model, counterfactual_batches(data, "original", batch_size=100))
    assert evaluate(model, data, "test", cfg) == M.evaluate_scores(s.logits["model"], s.user, (1, 10), cfg.ties)


# ------------------------------------------------------------------------------------------------
# measure helpers
# ------------------------------------------------------------------------------------------------
def test_rank_measures_and_chance_levels():
    K = 7
    const = np.zeros((3, K))
    topic = np.array([0, 3, -1])
    rr = measures.target_rr(const, topic)
    H = sum(1 / i for i in range(1, K + 1))
    assert np.allclose(rr[:2], H / K) and np.isnan(rr[2])  # constant scores = chance, in expectation
    s = np.arange(K)[None, :].astype(float).repeat(2, 0)
    assert np.allclose(measures.target_rr(s, np.array([K - 1, 0])), [1.0, 1.0 / K])
    gains = np.random.default_rng(0).dirichlet(np.ones(K), 3)
    ndcg, chance = measures.graded_ndcg(const, gains)
    assert np.allclose(ndcg, chance)
    ndcg, _ = measures.graded_ndcg(gains, gains)
    assert np.allclose(ndcg, 1.0)
    assert np.allclose(measures.spearman_rows(gains, gains), 1.0)
    assert np.allclose(measures.spearman_rows(gains, -gains), -1.0)
    assert np.isnan(measures.spearman_rows(const, gains)).all()
    sc = np.array([[3.0, 1.0, 3.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    assert np.allclose(measures.instance_auc(sc), [(1 + 0.5) / 3, 0.5])


# ------------------------------------------------------------------------------------------------
# CLSR alpha_override
# ------------------------------------------------------------------------------------------------
SIZES = ModelSizes(n_users=6, n_items=30, n_cates=5)


def _batch(lengths=(8, 6, 3), C=4, L=8, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    Bn = len(lengths)
    mask = (torch.arange(L)[None] < lengths[:, None]).float()
    return Batch(
        user=torch.arange(1, Bn + 1),
        hist_item=torch.randint(1, SIZES.n_items, (Bn, L), generator=g) * mask.long(),
        hist_cate=torch.randint(1, SIZES.n_cates, (Bn, L), generator=g) * mask.long(),
        mask=mask,
        length=lengths,
        time_to_now=torch.rand(Bn, L, generator=g).mul(5).flip(1) * mask,
        time_from_first=torch.rand(Bn, L, generator=g).mul(5) * mask,
        cand_item=torch.randint(1, SIZES.n_items, (Bn, C), generator=g),
        cand_cate=torch.randint(1, SIZES.n_cates, (Bn, C), generator=g),
        user_row=torch.arange(Bn),
        instance=torch.arange(Bn),
    )


def _clsr(**kw) -> CLSR:
    torch.manual_seed(0)
    m = CLSR(CLSRConfig(**kw), SIZES).double()
    with torch.no_grad():
        for t in (m.tokens.item, m.tokens.cate, m.user_long, m.user_short):
            t.weight.normal_(0, 0.5)
    return m.eval()


@pytest.mark.parametrize("manual_alpha", [False, True])
def test_clsr_alpha_override(manual_alpha):
    m = _clsr(manual_alpha=manual_alpha)
    b = _batch()
    with torch.no_grad():
        base = m(b)
        _, e_v, _, _ = m.embed(b)
        for a in (1.0, 0.0, 0.3):
            out = m(b, alpha_override=a)
            assert out["alpha"].shape == base["alpha"].shape
            assert torch.all(out["alpha"] == a)
            for k in ("u_long", "u_short", "p_long", "p_short", "att_long", "att_short"):
                assert torch.equal(out[k], base[k]), k  # encoders untouched
            mix = a * base["u_long"].unsqueeze(1) + (1 - a) * base["u_short"]
            torch.testing.assert_close(out["user"], mix)
            torch.testing.assert_close(out["logits"], m.predict(mix, e_v))
        # α = 1 reads out u^l only: the logits do not depend on u^s's attention at all
        long_only = m(b, alpha_override=1.0)["logits"]
        torch.testing.assert_close(long_only, m.predict(base["u_long"].unsqueeze(1).expand_as(base["u_short"]), e_v))
        assert torch.equal(m(b, alpha_override=None)["logits"], base["logits"])
        with pytest.raises(ValueError, match="alpha_override"):
            m(b, alpha_override=1.5)


def test_clsr_alpha_override_naive_path_matches():
    fast = _clsr()
    naive = _clsr(shared_encoders=False)
    naive.load_state_dict(fast.state_dict())
    naive.eval()
    b = _batch()
    with torch.no_grad():
        for a in (1.0, 0.0):
            f, n = fast(b, alpha_override=a), naive(b, alpha_override=a)
            assert torch.all(n["alpha"] == a) and n["alpha"].shape == f["alpha"].shape
            torch.testing.assert_close(n["logits"], f["logits"])
