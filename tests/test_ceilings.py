"""The oracle as a ceiling: the oracle stage's JSON, the margin share, α against the posterior, the sweep.

- The oracle stage writes reports/metrics/oracle/<dataset>.json with a model run's test keys, and its
  catalogue scores are a predictive distribution consistent with the candidate scores.
- `margin_share`, `soft_auc`, `pearson` / `spearman` and `ceilings` against hand-worked examples and
  brute-force pair counting.
- The sweep group runs end to end on a tiny grid (2 cells × 3 models × 1 seed, one epoch).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from clsr import metrics as M
from clsr import oracle as O
from clsr import pipeline as pl
from clsr.disentangle import measures
from clsr.disentangle.evaluate import ceilings
from clsr.params import check
from clsr.pipeline import read_json
from clsr.rundir import load_per_instance
from clsr.stages import oracle as oracle_stage
from clsr.stages import sweep


@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory):
    work = tmp_path_factory.mktemp("ceilings")
    return pl.Context(root=pl.find_root(), params=check(copy.deepcopy(pl.TINY_PARAMS), "tiny"), tiny=True, work=work)


# ------------------------------------------------------------------------------------------------
# the oracle stage
# ------------------------------------------------------------------------------------------------
def test_oracle_stage_writes_the_model_metric_keys(tiny_ctx):
    out = oracle_stage.run(tiny_ctx, "tiny")
    written = read_json(oracle_stage.result_path(tiny_ctx, "tiny"))
    assert written["dataset"] == "tiny"
    model_keys = set(M.evaluate_scores(np.random.default_rng(0).normal(size=(5, 20)), np.arange(5), ties="mean"))
    assert set(written["test"]) == model_keys
    assert written["protocols"]["sampled"] == written["test"]
    protocols = [p for p in ("sampled", "uniform") if p in out["popularity"]["protocols"]]
    assert protocols == ["sampled", "uniform"]  # the prepared data hold the uniform test candidates
    full_keys = {"mrr", "hit@10", "ndcg@10", "hit@20", "ndcg@20", "instances", "items", "left_out"}
    for block in (written, written["long"], written["short"]):
        for p in protocols:
            assert set(block["protocols"][p]) == model_keys
        assert set(block["protocols"]["full"]) == full_keys
        assert block["protocols"]["full"]["instances"] + block["protocols"]["full"]["left_out"] == written["test"]["instances"]
    for p in protocols:
        assert set(written["popularity"]["protocols"][p]) == model_keys
    assert 0.5 < written["alpha_auc"] <= 1.0
    assert 0.0 < written["short_driven"]["posterior_mean"] < 1.0
    # the oracle is far above popularity on tiny data with a strong planted signal
    assert written["test"]["gauc"] > written["popularity"]["protocols"]["sampled"]["gauc"]


def test_catalogue_scores_are_the_predictive_distribution(tiny_ctx):
    """exp(full) over the items the data hold sums to 1 minus the mass of the generator's items never
    drawn; the candidates' columns equal `score_candidates`."""
    from clsr.stages.protocol import ensure_prepared

    data = ensure_prepared(tiny_ctx, "tiny")
    params = O.params_for(data)
    cat = O.score_catalogue(data, "test", params)
    cand = O.score_candidates(data, "test", params)
    rows = np.arange(len(data.instances["test"]))[:, None]
    for k in ("full", "long", "short"):
        np.testing.assert_allclose(cat[k][rows, data.candidates["test"].item + 1], cand[k], rtol=0, atol=1e-12)
    assert np.all(cat["full"][:, 0] == -np.inf)
    # the mass of the generator's items that never appear in the data, per row
    seen = np.zeros(len(params.item_prob), dtype=bool)
    seen[data.item_ids.astype(np.int64) - 1] = True
    user = data.user_ids[data.instances["test"].user].astype(np.int64) - 1
    pi = O.topic_posterior(data, params)[data.target_event("test")]  # (n, C) over generator categories
    mix = (1 - params.p_short[user])[:, None] * params.theta[user] + params.p_short[user][:, None] * pi
    unseen = (~seen)[None, :] * params.item_prob[None, :] * mix[:, params.item_category]
    np.testing.assert_allclose(np.exp(cat["full"]).sum(1), 1.0 - unseen.sum(1), rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# the measures, by hand
# ------------------------------------------------------------------------------------------------
def test_margin_share_by_hand():
    share = measures.margin_share({"auc": 0.7, "gauc": 0.4, "mrr": 0.3}, {"auc": 0.9, "gauc": 0.8, "mrr": 0.2},
                                  {"auc": 0.5, "gauc": 0.6, "mrr": 0.25})
    assert share["auc"] == pytest.approx(0.5)  # (0.7 − 0.5) / (0.9 − 0.5)
    assert share["gauc"] == pytest.approx(-1.0)  # (0.4 − 0.6) / (0.8 − 0.6): worse than popularity
    assert np.isnan(share["mrr"])  # the oracle does not beat popularity: no margin to share


def brute_soft_auc(s, w):
    num = den = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if i != j:
                pw = w[i] * (1 - w[j])
                den += pw
                num += pw * ((s[i] > s[j]) + 0.5 * (s[i] == s[j]))
    return num / den


def test_soft_auc_by_hand_and_by_pairs():
    # pairs (i, j) weigh w_i (1 − w_j); the correctly ordered ones: (1,0) .72, (2,0) .32, (2,1) .04 of 1.76
    assert measures.soft_auc(np.array([0.0, 1.0, 2.0]), np.array([0.2, 0.9, 0.4])) == pytest.approx(1.08 / 1.76)
    assert measures.soft_auc(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.5, 1.0])) == pytest.approx(1.0)
    assert measures.soft_auc(np.array([1.0, 1.0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    w = rng.uniform(size=40)
    assert measures.soft_auc(s, w) == pytest.approx(brute_soft_auc(s, w), abs=1e-12)
    y = rng.integers(0, 2, 40)
    assert measures.soft_auc(s, y.astype(float)) == pytest.approx(M.auc(s, y == 1), abs=1e-12)


def test_correlations_by_hand():
    assert measures.pearson(np.array([1.0, 2, 3]), np.array([1.0, 3, 2])) == pytest.approx(0.5)
    assert measures.spearman(np.array([1.0, 2, 3]), np.array([10.0, 300, 20])) == pytest.approx(0.5)
    x = np.linspace(0.1, 1, 20)
    assert measures.spearman(x, x**3) == pytest.approx(1.0)
    assert measures.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert np.isnan(measures.pearson(np.ones(5), x[:5]))


def test_alpha_vs_posterior_and_ceilings_by_hand():
    post = np.linspace(0.05, 0.95, 30)
    v = measures.alpha_vs_posterior(0.3 + 0.1 * post, post, reps=50)
    assert v["pearson"] == pytest.approx(1.0) and v["spearman"] == pytest.approx(1.0)
    assert v["pearson_lo"] <= v["pearson"] <= v["pearson_hi"]
    assert v["alpha_auc_posterior"] == pytest.approx(measures.soft_auc(post, post))
    flat = measures.alpha_vs_posterior(np.full(30, 0.5), post, reps=0)
    assert np.isnan(flat["pearson"]) and flat["alpha_auc_posterior"] == pytest.approx(0.5)

    original = {"auc": 0.7, "gauc": 0.7, "mrr": 0.3, "auc_long": 0.6, "gauc_long": 0.6, "mrr_long": 0.2,
                "auc_short": 0.55, "gauc_short": 0.55, "mrr_short": 0.2}
    oracle = {"original": {"auc": 0.9, "gauc": 0.9, "mrr": 0.5, "auc_long": 0.8, "gauc_long": 0.8, "mrr_long": 0.4,
                           "auc_short": 0.6, "gauc_short": 0.6, "mrr_short": 0.3},
              "popularity": {"auc": 0.5, "gauc": 0.5, "mrr": 0.1}}
    c = ceilings(original, oracle, np.full(30, np.nan), post, reps=0)
    assert c["margin_share"]["gauc"] == pytest.approx(0.5)  # (0.7 − 0.5) / (0.9 − 0.5)
    assert c["margin_share_long"]["mrr"] == pytest.approx(1 / 3)  # (0.2 − 0.1) / (0.4 − 0.1)
    assert c["margin_share_short"]["auc"] == pytest.approx(0.5)  # (0.55 − 0.5) / (0.6 − 0.5)
    assert "alpha_vs_posterior" not in c  # a model without α


# ------------------------------------------------------------------------------------------------
# the sweep group, end to end on a tiny grid
# ------------------------------------------------------------------------------------------------
def test_cell_names_round_trip():
    assert sweep.cell_name(0.2, 3.0) == "p0.2_run3"
    assert sweep.parse_cell("p0.2_run3") == (0.2, 3.0)
    with pytest.raises(ValueError, match="p<p_short_mean>_run<mean_topic_run>"):
        sweep.parse_cell("p0.2-run3")


def test_sweep_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLSR_TINY", "1")
    monkeypatch.setenv("CLSR_TINY_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match=r"^error: sweep cell 'p0.5-run8': expected p<p_short_mean>_run") as e:
        sweep.main(["train", "p0.5-run8", "clsr", "0"])
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match=r"p0.5_run8: not prepared; run `python -m clsr.stages.sweep data p0.5_run8`"):
        sweep.main(["train", "p0.5_run8", "clsr", "0"])


def test_sweep_group_end_to_end(tmp_path):
    params = copy.deepcopy(pl.TINY_PARAMS)
    params["sweep"] = {"p_short_mean": [0.2, 0.8], "mean_topic_run": [3], "models": ["clsr", "clsr_nocon", "slirec"],
                       "seeds": [0], "source": {"n_users": 60, "n_items": 120, "n_categories": 6, "mean_events": 25},
                       "protocol": {"test_negatives": 19, "max_len": 20}, "train": {"epochs": 1, "patience": 1}}
    ctx = pl.Context(root=pl.find_root(), params=check(params, "tiny"), tiny=True, work=tmp_path)
    assert sweep.cells(ctx.params) == ["p0.2_run3", "p0.8_run3"]
    for cell in sweep.cells(ctx.params):
        sweep.run_data(ctx, cell)
        assert load_p_short(ctx, cell) == sweep.parse_cell(cell)[0]
        for model in params["sweep"]["models"]:
            r = sweep.run_train(ctx, cell, model, 0, boot_reps=10)
            assert {"test", "ground_truth", "ceiling", "train_seconds", "epochs_run"} <= set(r)
            assert "alpha_vs_posterior" in r["ceiling"]
    # a finished run is reused, not trained again (prefill --sweep trains them side by side beforehand)
    run_metrics = ctx.runs_dir / "sweep" / "p0.2_run3" / "clsr_seed0" / "metrics.json"
    stamp = run_metrics.stat().st_mtime_ns
    first = read_json(sweep.metrics_file(ctx, "p0.2_run3", "clsr_seed0"))
    again = sweep.run_train(ctx, "p0.2_run3", "clsr", 0, boot_reps=10)
    assert run_metrics.stat().st_mtime_ns == stamp and again["test"] == first["test"]
    inst = load_per_instance(sweep.instances_file(ctx, "p0.2_run3", "clsr_seed0"))
    assert set(inst) == {"user", "driver", "alpha", "auc", "auc_long", "auc_short"}
    assert np.isfinite(inst["alpha"]).all() and set(np.unique(inst["driver"])) <= {0, 1}
    frame = sweep.run_report(ctx, replicates=50)
    assert len(frame) == 2 * (1 + 3)  # an oracle row and three models per cell
    oracle_rows = frame[frame.model == "oracle"]
    assert (oracle_rows["alpha_auc"] > 0.5).all()
    table = (ctx.reports_dir / "tables" / "sweep.md").read_text()
    assert "Bayes oracle" in table and "Δ α-AUC" in table and "CLSR against each other model" in table
    assert (ctx.reports_dir / "figures" / "sweep" / "sweep.png").stat().st_size > 0
    written = read_json(ctx.reports_dir / "metrics" / "sweep.json")
    assert written["rows"]
    comp = {(c["cell"], c["other"], c["quantity"]) for c in written["comparisons"]}
    assert comp == {(cell, other, q) for cell in ("p0.2_run3", "p0.8_run3") for other in ("clsr_nocon", "slirec")
                    for q in ("alpha_auc", "gauc", "specialisation")}


def _instances(rng, n, driver, alpha=None, auc=None, shift=0.0):
    auc = rng.uniform(0.3, 0.9, n) if auc is None else auc
    return {"user": np.arange(n), "driver": driver, "alpha": rng.uniform(size=n) if alpha is None else alpha,
            "auc": auc + shift, "auc_long": rng.uniform(size=n), "auc_short": rng.uniform(size=n)}


def test_sweep_comparison_known_answers():
    rng = np.random.default_rng(0)
    n = 200
    driver = np.arange(n) % 2  # 0 = long-driven
    base = rng.uniform(0.3, 0.8, n)
    # B's α separates the drivers perfectly (α-AUC 1), A's α is constant (α-AUC ½); B's instance AUC is A's + 0.1
    a = {s: _instances(rng, n, driver, alpha=np.full(n, 0.5), auc=base) for s in (0, 1)}
    b = {s: _instances(rng, n, driver, alpha=(driver == 0).astype(float), auc=base, shift=0.1) for s in (0, 1)}
    c = sweep.compare_runs(a, b, replicates=200)
    assert c["alpha_auc"]["difference"] == pytest.approx(0.5) and c["alpha_auc"]["winner"] == "B"
    assert c["alpha_auc"]["low"] == pytest.approx(0.5) and c["alpha_auc"]["high"] == pytest.approx(0.5)
    assert c["gauc"]["difference"] == pytest.approx(0.1) and c["gauc"]["winner"] == "B"
    assert c["gauc"]["low"] == pytest.approx(0.1) and c["gauc"]["high"] == pytest.approx(0.1)
    assert c["specialisation"]["seeds"] == 2
    same = sweep.compare_runs(a, a, replicates=200)  # a model against itself: exactly 0, no winner
    for q in ("alpha_auc", "gauc", "specialisation"):
        assert same[q]["difference"] == 0.0 and same[q]["low"] == 0.0 and same[q]["high"] == 0.0
        assert same[q]["winner"] is None
    # a model without α: no α-AUC comparison
    no_alpha = {s: {**v, "alpha": np.full(n, np.nan)} for s, v in a.items()}
    assert "alpha_auc" not in sweep.compare_runs(no_alpha, b, replicates=20)
    other = {s: {**v, "driver": 1 - driver} for s, v in b.items()}
    with pytest.raises(ValueError, match="different test instances"):
        sweep.compare_runs(a, other, replicates=20)


def load_p_short(ctx, cell) -> float:
    return float(sweep.load_cell(ctx, cell).meta["source"]["p_short_mean"])


def test_oracle_full_ranking_by_counting(tiny_ctx):
    """The oracle's full-ranking MRR recomputed row by row: the target's rank among the training
    vocabulary's items that are not in the user's history (ties count ½)."""
    from clsr.stages.protocol import ensure_prepared

    data = ensure_prepared(tiny_ctx, "tiny")
    params = O.params_for(data)
    got = oracle_stage.full_ranking(data, params)["full"]
    cat = O.score_catalogue(data, "test", params)["full"]
    inst = data.instances["test"]
    vocab_of_code = data.item_index
    rr = []
    for r in range(len(inst)):
        target_code = data.event_item[data.target_event("test")[r]]
        if vocab_of_code[target_code] == 0:
            continue
        start = data.user_offsets[inst.user[r]]
        history = set(vocab_of_code[data.event_item[start:start + inst.pos[r]]].tolist())
        t = cat[r, target_code + 1]
        greater = equal = 0
        for code in range(len(data.item_ids)):
            v = vocab_of_code[code]
            if v == 0 or code == target_code or v in history:
                continue
            greater += cat[r, code + 1] > t
            equal += cat[r, code + 1] == t
        rr.append(1.0 / (1 + greater + 0.5 * equal))
    assert got["instances"] == len(rr)
    assert got["mrr"] == pytest.approx(np.mean(rr), abs=1e-12)
