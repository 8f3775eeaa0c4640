"""The generator sweep (stages sweep_data@<cell>, sweep_train@<cell>-<model>-<seed> and sweep_report of
dvc.yaml; not part of `make repro`): where is disentanglement learnable, and where does CLSR's contrastive
loss help?

Each cell of the ``sweep`` section's grid p_short_mean × mean_topic_run is its own synthetic dataset (the
other source options from ``sweep.source``, the protocol from ``sweep.protocol``), named
``p<p_short_mean>_run<mean_topic_run>`` (`cell_name`) and stored under data/sweep/<cell>/. Per cell:

* ``data``:   prepare the dataset and score it with the Bayes oracle (`clsr.stages.oracle.evaluate`)
              -> reports/metrics/sweep/<cell>/oracle.json;
* ``train``:  one model × seed, trained with the main train params and the ``sweep.train`` overrides (to
              early stopping), then through the ground-truth measures of the disentanglement study and
              against the oracle -> runs/sweep/<cell>/<model>_seed<seed>/ and
              reports/metrics/sweep/<cell>/<model>_seed<seed>.json, with the per-test-instance values the
              paired comparisons resample beside it (.npz: user, true driver, α on the positive, the
              instance AUC of the as-trained, α = 1 and α = 0 readouts);
* ``report``: every cell's files -> reports/metrics/sweep.json, reports/tables/sweep.md and
              reports/figures/sweep/sweep.png. Per cell, CLSR is compared with CLSR without the contrastive
              loss and with SLi-Rec on α-AUC, GAUC and specialisation (`comparisons`): the mean over seeds
              of the per-seed difference and a 95 % paired-bootstrap interval (test instances resampled
              jointly for both models, the seeds pooled; `clsr.disentangle.verdicts`, `clsr.stats`); a
              winner is named only where the interval excludes 0.

Command line (what dvc.yaml runs): ``python -m clsr.stages.sweep data CELL``,
``python -m clsr.stages.sweep train CELL MODEL SEED``, ``python -m clsr.stages.sweep report``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from clsr.data.store import PreparedData, atomic_write_json, atomic_write_text
from clsr.pipeline import Context, read_json
from clsr.rundir import load_per_instance, save_per_instance

CELL = re.compile(r"^p(?P<p>[0-9.]+)_run(?P<run>[0-9.]+)$")
#: the columns of the sweep table (per model: mean over seeds)
COLUMNS = {
    "alpha_auc": "α-AUC (true driver)",
    "alpha_auc_posterior": "α-AUC (posterior)",
    "gauc": "GAUC",
    "gauc_share": "GAUC share of oracle margin",
    "gauc_long@long_driven": "α=1 GAUC, long-driven",
    "gauc_short@short_driven": "α=0 GAUC, short-driven",
    "specialisation": "specialisation",
}
#: the paired comparisons of every cell: (B, A) = CLSR against each other model, difference B − A
PAIRS = (("clsr", "clsr_nocon"), ("clsr", "slirec"))
#: compared quantity -> its label (each higher = better at its job)
COMPARED = {"alpha_auc": "α-AUC", "gauc": "GAUC", "specialisation": "specialisation"}


def cell_name(p_short_mean: float, mean_topic_run: float) -> str:
    """``p0.2_run3``: the dataset name of one grid cell (as dvc.yaml spells it from params.yaml)."""
    return f"p{p_short_mean:g}_run{mean_topic_run:g}"


def parse_cell(cell: str) -> tuple[float, float]:
    """(p_short_mean, mean_topic_run) of a cell name; a ValueError naming the expected form otherwise."""
    m = CELL.match(cell)
    if not m:
        raise ValueError(f"sweep cell {cell!r}: expected p<p_short_mean>_run<mean_topic_run>, e.g. p0.5_run8")
    return float(m["p"]), float(m["run"])


def cells(params: Mapping[str, Any]) -> list[str]:
    s = params["sweep"]
    return [cell_name(p, r) for p in s["p_short_mean"] for r in s["mean_topic_run"]]


def data_dir(ctx: Context) -> Path:
    return ctx.work / "data" / "sweep"


def metrics_file(ctx: Context, cell: str, name: str) -> Path:
    return ctx.metrics_path("sweep", cell, name)


def instances_file(ctx: Context, cell: str, name: str) -> Path:
    """The per-test-instance values of a run, beside its metrics file."""
    return metrics_file(ctx, cell, name).with_suffix(".npz")


def cell_params(params: Mapping[str, Any], cell: str) -> dict[str, Any]:
    """The params mapping `clsr.data.prepare.prepare` reads for the cell's dataset."""
    p, run = parse_cell(cell)
    s = params["sweep"]
    source = {**{k: v for k, v in s["source"].items() if k != "name"}, "name": "synthetic",
              "p_short_mean": p, "mean_topic_run": run}
    return {"datasets": {cell: {"source": source, "protocol": dict(s["protocol"])}}}


def load_cell(ctx: Context, cell: str) -> PreparedData:
    """The cell's prepared dataset; a FileNotFoundError naming the step that builds it when it is missing."""
    from clsr.data.prepare import load_prepared

    parse_cell(cell)
    if not (data_dir(ctx) / cell / "meta.json").exists():
        raise FileNotFoundError(f"{data_dir(ctx) / cell}: not prepared; run `python -m clsr.stages.sweep data {cell}` "
                                f"(or `dvc repro sweep_data`) first")
    return load_prepared(cell, data_dir(ctx))


# ---- stages ------------------------------------------------------------------------------------------
def run_data(ctx: Context, cell: str) -> dict[str, Any]:
    """Prepare the cell's dataset and write the oracle's metrics on it."""
    from clsr.data.prepare import prepare
    from clsr.disentangle.evaluate import oracle_eval
    from clsr.disentangle.truth import load_truth, read_profiles
    from clsr.stages.disentanglement import _clean
    from clsr.stages.oracle import evaluate

    data = prepare(cell, cell_params(ctx.params, cell), ctx.raw_dir, data_dir(ctx))
    ties = ctx.params["train"]["ties"]
    out = evaluate(data, ties)
    truth = load_truth(data, read_profiles(data_dir(ctx), cell), "test")
    out["ground_truth"] = _clean(oracle_eval(data, truth, "test", ties, reps=0)[0]["ground_truth"])
    path = metrics_file(ctx, cell, "oracle")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    return out


def cell_run(ctx: Context, cell: str, model: str, seed: int):
    """(resolved run spec, run folder) of one model × seed on a cell: the main params with the ``sweep.train``
    overrides, in runs/sweep/<cell>/<model>_seed<seed>."""
    from clsr.runs import resolve_run

    overrides = {f"train.{k}": v for k, v in ctx.params["sweep"]["train"].items()}
    return resolve_run(ctx.params, model, overrides, seed=seed), ctx.runs_dir / "sweep" / cell / f"{model}_seed{seed}"


def fit_cell_run(ctx: Context, cell: str, model: str, seed: int, data: PreparedData | None = None):
    """(FitResult, run folder, spec) of one model × seed on the cell's dataset: the finished run of this
    configuration and training code when runs/sweep/<cell>/<model>_seed<seed> holds one (trained earlier, e.g.
    side by side by `python -m clsr prefill --sweep`), else trained there now (resumed after an interruption)."""
    from clsr.stages.train import fit_or_reuse

    data = data if data is not None else load_cell(ctx, cell)
    spec, run_dir = cell_run(ctx, cell, model, seed)
    res, run_dir = fit_or_reuse(ctx, cell, spec, data, run_dir)
    return res, run_dir, spec


def run_train(ctx: Context, cell: str, model: str, seed: int, boot_reps: int = 200) -> dict[str, Any]:
    """Train one model × seed on the cell's dataset (or reuse its finished run) and measure it against the
    ground truth and the oracle."""
    import torch

    from clsr.disentangle import measures
    from clsr.disentangle.evaluate import ceilings, ground_truth_eval, oracle_eval, positive_alpha
    from clsr.disentangle.truth import load_truth, read_profiles
    from clsr.stages.disentanglement import _clean
    from clsr.train import load_trained

    data = load_cell(ctx, cell)
    res, run_dir, spec = fit_cell_run(ctx, cell, model, seed, data)
    seconds = float(sum(r["train_seconds"] + r.get("valid_seconds", 0.0) for r in res.history))
    if spec.train_cfg.threads > 0:
        torch.set_num_threads(spec.train_cfg.threads)
    trained = load_trained(run_dir, data)
    ties, batch = ctx.params["train"]["ties"], ctx.params["train"]["eval_batch_size"]
    truth = load_truth(data, read_profiles(data_dir(ctx), cell), "test")
    gt, scores = ground_truth_eval(trained, data, truth, None, "test", batch, ties, boot_reps)
    oracle, long_posterior = oracle_eval(data, truth, "test", ties, boot_reps)
    first = scores["original"]
    save_per_instance(instances_file(ctx, cell, f"{model}_seed{seed}"), {
        "user": np.asarray(first.user), "driver": np.asarray(truth.driver), "alpha": positive_alpha(first),
        **{f"auc{sfx}": measures.instance_auc(first.logits[r]) for r, sfx in (("model", ""), ("long", "_long"),
                                                                             ("short", "_short"))},
    })
    from clsr import metrics as M
    from clsr.disentangle.measures import READOUTS, SUFFIX

    original = {}
    for r in READOUTS:
        m = M.evaluate_scores(scores["original"].logits[r], scores["original"].user, (10,), ties)
        original.update({f"{k}{SUFFIX[r]}": float(m[k]) for k in ("auc", "gauc", "mrr")})
    out = {
        "cell": cell, "model": model, "seed": seed, "test": res.metrics["test"], "original": original,
        "ground_truth": gt, "ceiling": ceilings(original, oracle, positive_alpha(scores["original"]),
                                                long_posterior, boot_reps),
        "best_epoch": res.metrics.get("best_epoch"), "epochs_run": len(res.history), "train_seconds": seconds,
        "run": str(run_dir.relative_to(ctx.work)) if run_dir.is_relative_to(ctx.work) else str(run_dir),
    }
    out = _clean(out)
    path = metrics_file(ctx, cell, f"{model}_seed{seed}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    return out


def collect(ctx: Context) -> pd.DataFrame:
    """One row per cell × model × seed (plus one 'oracle' row per cell) with the sweep's measures."""
    rows = []
    s = ctx.params["sweep"]
    for cell in cells(ctx.params):
        p, run = parse_cell(cell)
        o = read_json(metrics_file(ctx, cell, "oracle"))
        pop = o["popularity"]["protocols"]["sampled"]["gauc"]
        og = o["ground_truth"]
        rows.append({"cell": cell, "p_short_mean": p, "mean_topic_run": run, "model": "oracle", "seed": None,
                     "alpha_auc": o["alpha_auc"], "alpha_auc_posterior": og.get("alpha_auc_posterior"),
                     "gauc": o["test"]["gauc"], "gauc_share": 1.0, "popularity_gauc": pop,
                     **{k: og.get(k) for k in ("gauc_long@long_driven", "gauc_short@short_driven", "specialisation")}})
        for model in s["models"]:
            for seed in s["seeds"]:
                path = metrics_file(ctx, cell, f"{model}_seed{seed}")
                if not path.exists():
                    raise FileNotFoundError(f"{path}: missing; run `dvc repro sweep_train` (or the sweep command "
                                            "in the README) before the sweep report")
                r = read_json(path)
                g, c = r["ground_truth"], r["ceiling"]
                row = {"cell": cell, "p_short_mean": p, "mean_topic_run": run, "model": model, "seed": seed,
                       "gauc": r["original"]["gauc"], "gauc_share": c["margin_share"]["gauc"],
                       "popularity_gauc": pop, "train_seconds": r["train_seconds"], "epochs_run": r["epochs_run"]}
                for k in ("alpha_auc", "gauc_long@long_driven", "gauc_short@short_driven", "specialisation"):
                    row[k] = g.get(k)
                row["alpha_auc_posterior"] = (c.get("alpha_vs_posterior") or {}).get("alpha_auc_posterior")
                rows.append(row)
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per cell × model (the oracle has one row per cell)."""
    cols = [c for c in COLUMNS if c in frame]
    order = {m: i for i, m in enumerate(dict.fromkeys(frame["model"]))}  # the oracle first, then the models
    frame = frame.assign(order=frame["model"].map(order))
    g = frame.groupby(["p_short_mean", "mean_topic_run", "order", "model"], sort=True)[cols]
    out = g.mean().join(g.std(ddof=1).add_suffix("_std")).join(g.size().rename("seeds"))
    return out.reset_index(level="order", drop=True)


def markdown(frame: pd.DataFrame, params: Mapping[str, Any], comp: pd.DataFrame | None = None) -> str:
    """reports/tables/sweep.md: the per-cell measures (mean ± std over seeds) and, with `comp` (`comparisons`),
    CLSR against each other model per cell with intervals and verdicts."""
    from clsr.disentangle.report import label

    s = params["sweep"]
    summ = summary(frame).reset_index()
    lines = [
        "# Generator sweep: where is disentanglement learnable?", "",
        f"Synthetic source options of every cell: {dict(s['source'])}; p_short_mean × mean_topic_run = "
        f"{s['p_short_mean']} × {s['mean_topic_run']}; models {s['models']}, seeds {s['seeds']}; train overrides "
        f"{dict(s['train'])}. Values: mean ± std over seeds. α-AUC (true driver): ROC-AUC of α for long-driven "
        "targets (the oracle row: its posterior, the best reachable); α-AUC (posterior): against the oracle's "
        "posterior; GAUC share = (model − popularity) / (oracle − popularity).", "",
    ]
    cols = [c for c in COLUMNS if c in summ]
    lines += ["| p_short_mean | mean_topic_run | model | " + " | ".join(COLUMNS[c] for c in cols) + " |",
              "|---|---|---|" + "---|" * len(cols)]
    for _, r in summ.iterrows():
        cells_ = []
        for c in cols:
            v, sd = r.get(c), r.get(f"{c}_std")
            if v is None or not np.isfinite(v):
                cells_.append("—")
            elif sd is not None and np.isfinite(sd):
                cells_.append(f"{v:.3f} ± {sd:.3f}")
            else:
                cells_.append(f"{v:.3f}")
        name = "*Bayes oracle*" if r["model"] == "oracle" else label(r["model"])
        lines.append(f"| {r['p_short_mean']:g} | {r['mean_topic_run']:g} | {name} | " + " | ".join(cells_) + " |")
    if "train_seconds" in frame:
        t = frame["train_seconds"].dropna()
        lines += ["", f"Training time per run: median {t.median():.0f} s, total {t.sum() / 3600:.2f} h over {len(t)} runs."]
    lines += comparison_markdown(comp if comp is not None else pd.DataFrame())
    return "\n".join(lines) + "\n"


def compare_runs(a: Mapping[int, Mapping[str, np.ndarray]], b: Mapping[int, Mapping[str, np.ndarray]],
                 replicates: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """B − A on `COMPARED` from ``{seed: instances}`` of two models on one cell (the per-instance values
    `run_train` saves; the seeds both hold, the same test instances in the same order everywhere).

    α-AUC and specialisation: `verdicts.ground_truth_comparisons` (instances resampled jointly, the statistic
    recomputed; α-AUC only when both models have α). GAUC: each user's mean instance AUC paired across the
    models (`clsr.stats.paired_bootstrap`; with one test instance per user this is the GAUC). Returns
    {quantity: `verdicts.summary`} with winner "B" / "A" / None."""
    from clsr import stats
    from clsr.disentangle import verdicts

    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("sweep comparison: the two models share no seed")
    runs = [*(a[s] for s in seeds), *(b[s] for s in seeds)]
    driver = runs[0]["driver"]
    if any(len(r["driver"]) != len(driver) or np.any(r["driver"] != driver) for r in runs):
        raise ValueError("sweep comparison: the runs hold different test instances (their true drivers differ)")
    gt = verdicts.ground_truth_comparisons({"B": {s: b[s] for s in seeds}, "A": {s: a[s] for s in seeds}},
                                           driver, replicates, seed, reference="B")["A"]
    def user_auc(runs):
        return {s: stats.per_user_mean(runs[s]["user"], runs[s]["auc"])[:2] for s in seeds}

    c = stats.paired_bootstrap(user_auc(a), user_auc(b), replicates=replicates, seed=seed)
    gt["gauc"] = verdicts.summary(c, "B", "A", verdicts.USERS)
    return {q: gt[q] for q in COMPARED if q in gt}


def comparisons(ctx: Context, replicates: int = 1000) -> pd.DataFrame:
    """One row per cell × pair of `PAIRS` (both models in ``sweep.models``) × quantity: the difference
    (B − A, mean over seeds), its 95 % interval and the better model (None: no detectable difference)."""
    s = ctx.params["sweep"]
    rows = []
    for cell in cells(ctx.params):
        p, run = parse_cell(cell)
        for b, a in PAIRS:
            if not {a, b} <= set(s["models"]):
                continue
            runs = {m: {seed: load_per_instance(instances_file(ctx, cell, f"{m}_seed{seed}")) for seed in s["seeds"]}
                    for m in (a, b)}
            for q, c in compare_runs(runs[a], runs[b], replicates).items():
                winner = {"B": b, "A": a}.get(c["winner"])
                rows.append({"cell": cell, "p_short_mean": p, "mean_topic_run": run, "model": b, "other": a,
                             "quantity": q, "difference": c["difference"], "low": c["low"], "high": c["high"],
                             "seeds": c["seeds"], "method": c["method"], "winner": winner})
    return pd.DataFrame(rows)


def _outcome(row: Mapping[str, Any]) -> str:
    """'better' / 'worse' (for CLSR, the comparison's `model`) or 'none' (no detectable difference)."""
    if pd.isna(row["winner"]):
        return "none"
    return "better" if row["winner"] == row["model"] else "worse"


def comparison_markdown(comp: pd.DataFrame) -> list[str]:
    """The comparisons as a table (one row per cell × pair) and one computed sentence per pair × quantity."""
    from clsr.disentangle.report import label

    if comp.empty:
        return []
    lines = ["", "## CLSR against each other model, per cell", "",
             "Difference CLSR − other, mean over seeds, with the 95 % paired-bootstrap interval (test instances "
             "resampled jointly for both models, the seeds pooled); a winner is named only where the interval "
             "excludes 0.", "",
             "| p_short_mean | mean_topic_run | other | " + " | ".join(f"Δ {v}" for v in COMPARED.values()) + " |",
             "|---|---|---|" + "---|" * len(COMPARED)]
    for (p, run, other), d in comp.groupby(["p_short_mean", "mean_topic_run", "other"], sort=True):
        by_q = d.set_index("quantity")
        cells_ = []
        for q in COMPARED:
            if q not in by_q.index:
                cells_.append("—")
                continue
            r = by_q.loc[q]
            mark = {"better": " ↑", "worse": " ↓", "none": ""}[_outcome(r)]
            cells_.append(f"{r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]{mark}")
        lines.append(f"| {p:g} | {run:g} | {label(other)} | " + " | ".join(cells_) + " |")
    lines += ["", "↑ / ↓: CLSR better / worse (the interval excludes 0).", ""]
    for other, d in comp.groupby("other", sort=False):
        for q, name in COMPARED.items():
            dq = d[d["quantity"] == q]
            if dq.empty:
                continue
            groups: dict[str, list[str]] = {"better": [], "worse": [], "none": []}
            for _, r in dq.iterrows():
                groups[_outcome(r)].append(f"p {r['p_short_mean']:g} / run {r['mean_topic_run']:g}")

            def which(k: str) -> str:
                return f" ({', '.join(groups[k])})" if groups[k] else ""

            lines.append(f"- CLSR against {label(other)}, {name}: CLSR better in {len(groups['better'])} of "
                         f"{len(dq)} cells{which('better')}, worse in {len(groups['worse'])}{which('worse')}, "
                         f"no detectable difference in {len(groups['none'])}.")
    return lines


def run_report(ctx: Context, replicates: int = 1000) -> pd.DataFrame:
    """Collect every cell and compare the models per cell (`replicates` bootstrap replicates); write
    reports/metrics/sweep.json, reports/tables/sweep.md and the figure."""
    from clsr import plots
    from clsr.stages.disentanglement import _clean

    frame = collect(ctx)
    comp = comparisons(ctx, replicates)
    atomic_write_json(ctx.reports_dir / "metrics" / "sweep.json",
                      _clean({"settings": ctx.params["sweep"], "rows": frame.to_dict(orient="records"),
                              "comparisons": comp.to_dict(orient="records")}))
    atomic_write_text(ctx.table("sweep.md"), markdown(frame, ctx.params, comp))
    plots.sweep(frame, ctx.figure("sweep/sweep.png"), comp)
    return frame


def main(argv: list[str] | None = None) -> None:
    from clsr import pipeline as pl

    ap = argparse.ArgumentParser(prog="python -m clsr.stages.sweep", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    d = sub.add_parser("data", help="prepare one cell's dataset and score it with the oracle")
    d.add_argument("cell")
    t = sub.add_parser("train", help="train and measure one model x seed on a cell")
    t.add_argument("cell")
    t.add_argument("model")
    t.add_argument("seed", type=int)
    sub.add_parser("report", help="collect every cell into the sweep table and figure")
    args = ap.parse_args(argv)
    from clsr.config import ConfigError

    try:
        ctx = pl.context()
        if args.step == "data":
            run_data(ctx, args.cell)
        elif args.step == "train":
            run_train(ctx, args.cell, args.model, args.seed)
        else:
            run_report(ctx)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
