"""The disentanglement study (clsr.disentangle): counterfactual transforms, ground-truth measures that
can fail, the one scoring function (clsr.scoring) and CLSR's evaluation-time `alpha_override`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from clsr.data import batches as B
from clsr.data.batches import Batch
from clsr.data.prepare import prepare
from clsr.data.synthetic import SyntheticOptions, generate
from clsr.models.base import ModelSizes
from clsr.disentangle import measures
from clsr.disentangle.counterfactual import SETS, counterfactual_batches, shuffle_keys, splitmix64
from clsr.disentangle.evaluate import counterfactual_eval, ground_truth_eval
from clsr.disentangle.truth import Truth, load_truth
from clsr.models.clsr import CLSR, CLSRConfig
from clsr.scoring import AS_TRAINED, score_batches
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
