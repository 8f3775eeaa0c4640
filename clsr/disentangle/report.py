"""The disentanglement table, reports/tables/disentanglement.md, written from the results dict of the
stage (`clsr.stages.disentanglement`): per model the means over seeds, each seed's value beside the headline
measures, and the verdicts from the paired comparisons (`clsr.disentangle.verdicts`). Every number comes from
that dict; the verdict lines are computed."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from clsr.disentangle.counterfactual import SETS
from clsr.disentangle.measures import READOUTS, SUFFIX
from clsr.disentangle.verdicts import INSTANCES, QUANTITIES, REFERENCE, USERS

READOUT_LABELS = {"model": "as trained", "long": "α = 1 (long only)", "short": "α = 0 (short only)"}
SET_LABELS = {"original": "original", "recent": "recent-only", "shuffled": "shuffled"}
MODEL_LABELS = {"clsr": "CLSR", "clsr_nocon": "CLSR w/o contrastive", "slirec": "SLi-Rec"}


def label(model: str) -> str:
    """The display name of a model or alias."""
    return MODEL_LABELS.get(model, model)


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


def _at(d: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    for p in path:
        d = d.get(p) or {}
    return d


def _seeds_cell(entry: Mapping[str, Any], path: tuple[str, ...], key: str, nd: int = 3, signed: bool = False) -> str:
    """A model's `key` under `path`: with one seed, its value and that seed's bootstrap interval (if any);
    with several, the mean over seeds followed by each seed's value in parentheses."""
    fmt = (lambda x: _signed(x, nd)) if signed else (lambda x: _f(x, nd))
    seeds = list((entry.get("seeds") or {}).values())
    if len(seeds) <= 1:
        d = _at(seeds[0] if seeds else entry, path)
        return _ci(d, key, nd) if not signed else fmt(d.get(key))
    mean = _at(entry, path).get(key)
    if mean is None:
        return "—"
    return f"{fmt(mean)} ({' / '.join(fmt(_at(s, path).get(key)) for s in seeds)})"


def _verdict(c: Mapping[str, Any], quantity: str, other: str) -> str:
    """One sentence: CLSR − `other` on `quantity`, naming a winner only where the interval excludes 0."""
    name, higher = QUANTITIES[quantity]
    if c.get("winner") == REFERENCE:
        word = f"{label(REFERENCE)} higher"
    elif c.get("winner") == other:
        word = f"{label(other)} higher"
    else:
        word = "no detectable difference"
    n = c.get("seeds")
    return (f"- {name} ({higher}), {label(REFERENCE)} vs {label(other)}: {word}; difference "
            f"{_signed(c.get('difference'), 4)}, 95 % interval "
            f"[{_signed(c.get('low'), 4)}, {_signed(c.get('high'), 4)}] "
            f"({n} seed{'s' if n != 1 else ''}, {c.get('users')} test users).")


def _verdicts(per_model: Mapping[str, Any], models: list[str], quantities: tuple[str, ...], what: str) -> list[str]:
    """The verdict block of one family of quantities from ``per_model['_comparisons']``."""
    comps = per_model.get("_comparisons") or {}
    rows = [(q, m) for q in quantities for m in models if m != REFERENCE and q in comps.get(m, {})]
    head = (f"Verdicts ({what}): {label(REFERENCE)} − each other model, the mean over seeds of the per-seed "
            "difference, with a 95 % interval from a paired bootstrap over the test users (the same resampled "
            "users for both models and every seed)")
    if not rows:
        return [f"{head}.", f"- not enough models to compare ({label(REFERENCE)} and at least one other).", ""]
    methods = sorted({comps[m][q].get("method") for q, m in rows} - {None})
    lines = [f"{head}; " + "; ".join(_METHOD_TEXT.get(x, x) for x in methods)
             + ". A winner is named only where the interval excludes 0."]
    lines += [_verdict(comps[m][q], q, m) for q, m in rows]
    return lines + [""]


#: how each comparison method reads in the verdict block's first line
_METHOD_TEXT = {
    USERS: "a mean over users (gap, contrast) is recomputed from each drawn user's values of the two models",
    INSTANCES: "a statistic over instances (α-AUC, specialisation) is recomputed on each draw of the test "
               "instances (one per user with the per-user split)",
}


def markdown_report(results: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The disentanglement table (reports/tables/disentanglement.md) from the results dict."""
    k, seed = settings.get("recent_k"), settings.get("shuffle_seed")
    seeds = list(settings.get("seeds", []))
    lines = [
        "# Disentanglement of long- and short-term interests",
        "",
        f"Models: {', '.join(label(m) for m in settings.get('models', []))}, seed{'s' if len(seeds) != 1 else ''} "
        f"{', '.join(str(x) for x in seeds)} of each ({len(seeds)} run{'s' if len(seeds) != 1 else ''} per model: "
        "the main runs of registered models, the study's own runs of aliases). Every number is the mean over the "
        "seeds; beside the headline measures, each seed's value in parentheses (with one seed, its 95 % bootstrap "
        "interval over test instances in brackets). Test split, the fixed "
        f"1 + N candidates of the main table. Generated by the stage `disentanglement` (`clsr.stages.disentanglement`).",
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
                cells = [label(m), READOUT_LABELS[r]]
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
            cells = [label(m)] + [_f(per_model[m][s].get("mean_alpha_pos")) for s in sets]
            cells += [_seeds_cell(per_model[m], ("indices",), q, 4, signed=True) for q in ("recent_gap", "shuffle_gap")]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if any("indices" in per_model[m] for m in models) and len(sets) > 1:
            lines += _verdicts(per_model, models, ("recent_gap", "shuffle_gap"), "counterfactual")

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
            "α-AUC = ROC-AUC of the positives' α for 'long-driven' (chance 0.5, perfect 1). Parentheses: each "
            "seed's value; brackets: a 95 % bootstrap interval over test instances (one seed, or the oracle).", "",
            "| model | α-AUC (chance 0.5) | mean α, long-driven | mean α, short-driven |",
            "|---|---|---|---|",
        ]
        for m, g in gts.items():
            lines.append(f"| {label(m)} | {_seeds_cell(per_model[m], ('ground_truth',), 'alpha_auc')} | "
                         f"{_f(g.get('mean_alpha_long_driven'))} | {_f(g.get('mean_alpha_short_driven'))} |")
        oracle = per_model.get("_oracle")
        if oracle:
            og = oracle["ground_truth"]
            lines.append(f"| *Bayes oracle: P(long-driven given history and target category)* | {_ci(og, 'alpha_auc')} | "
                         f"{_f(og.get('mean_alpha_long_driven'))} | {_f(og.get('mean_alpha_short_driven'))} |")
            lines += ["", "The oracle row is the best α-AUC any model can reach on this data: even the exact "
                      "posterior cannot tell the driver apart where the target's category is likely under both "
                      "the profile and the topic."]
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
                cells = [label(m), READOUT_LABELS[r]]
                for grp in ("long_driven", "short_driven"):
                    cells += [_f(g.get(f"gauc{sfx}@{grp}")), _f(g.get(f"mrr{sfx}@{grp}")), _f(g.get(f"hit10{sfx}@{grp}"))]
                lines.append("| " + " | ".join(cells) + " |")
        if oracle:
            og = oracle["ground_truth"]
            for r, name in (("model", "full"), ("long", "long only"), ("short", "short only")):
                sfx = SUFFIX[r]
                cells = ["*Bayes oracle*", name]
                for grp in ("long_driven", "short_driven"):
                    cells += [_f(og.get(f"gauc{sfx}@{grp}")), _f(og.get(f"mrr{sfx}@{grp}")), _f(og.get(f"hit10{sfx}@{grp}"))]
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "| model | specialisation (chance 0) |", "|---|---|"]
        for m in gts:
            lines.append(f"| {label(m)} | {_seeds_cell(per_model[m], ('ground_truth',), 'specialisation')} |")
        if oracle:
            lines.append(f"| *Bayes oracle (long only vs short only)* | {_ci(oracle['ground_truth'], 'specialisation')} |")
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
            lines.append(f"| {label(m)} | " + " | ".join(_f(g.get(k_)) for k_ in keys) + " |")
        ref_key = {"profile_rho_long": "profile_rho", "profile_rho_short": "profile_rho", "profile_ndcg_long": "profile_ndcg",
                   "profile_ndcg_short": "profile_ndcg", "topic_mrr_short": "topic_mrr", "topic_mrr_long": "topic_mrr"}
        lines.append("| *chance (random scores)* | " + " | ".join(_f(chance.get(ref_key[k_])) for k_ in keys) + " |")
        lines.append("| *popularity (non-personal)* | " + " | ".join(_f(pop.get(ref_key[k_])) for k_ in keys) + " |")
        lines += ["", "| model | " + ("profile contrast (chance 0) | " if has_profile else "") + "topic contrast (chance 0) |",
                  "|---|" + ("---|" if has_profile else "") + "---|"]
        for m in gts:
            cell = lambda q, m=m: _seeds_cell(per_model[m], ("ground_truth",), q)  # noqa: E731
            lines.append(f"| {label(m)} | " + (f"{cell('profile_contrast')} | " if has_profile else "")
                         + f"{cell('topic_contrast')} |")
        if oracle:
            lines += _oracle_sections(per_model, models, oracle)
        lines += [""]
        lines += _verdicts(per_model, list(gts), ("alpha_auc", "specialisation", "profile_contrast", "topic_contrast"),
                           "ground truth")
    return "\n".join(lines) + "\n"


def _oracle_sections(per_model: Mapping[str, Any], models: list[str], oracle: Mapping[str, Any]) -> list[str]:
    """The ceiling tables: each readout's share of the oracle's margin over popularity, and α against the
    oracle's posterior long-driven probability."""
    o, pop = oracle["original"], oracle["popularity"]
    lines = [
        "", "### Ceilings: how much of the oracle's margin over popularity each model recovers", "",
        "Share = (model − popularity) / (oracle − popularity) per metric on the original test candidates: 1 = as "
        "good as the Bayes oracle, 0 = no better than scoring by train popularity. Each readout is compared with "
        "its own ceiling: as trained with the full oracle, α = 1 with the long-only oracle q(i|c)·θ_u(c), "
        "α = 0 with the short-only oracle q(i|c)·π_t(c).", "",
        "| scorer | readout | AUC | GAUC | MRR |", "|---|---|---|---|---|",
        f"| *popularity* | — | {_f(pop.get('auc'))} | {_f(pop.get('gauc'))} | {_f(pop.get('mrr'))} |",
    ]
    for r, name in (("model", "full"), ("long", "long only"), ("short", "short only")):
        sfx = SUFFIX[r]
        lines.append(f"| *Bayes oracle* | {name} | " + " | ".join(_f(o.get(f"{k}{sfx}")) for k in ("auc", "gauc", "mrr")) + " |")
    lines += ["", "| model | readout | share AUC | share GAUC | share MRR |", "|---|---|---|---|---|"]
    for m in models:
        c = per_model[m].get("ceiling", {})
        for r in READOUTS:
            share = c.get(f"margin_share{SUFFIX[r]}", {})
            lines.append(f"| {label(m)} | {READOUT_LABELS[r]} | " + " | ".join(_f(share.get(k), 3) for k in ("auc", "gauc", "mrr")) + " |")
    lines += [
        "", "### Ground truth: α against the oracle's posterior", "",
        "Per test instance, the model's α on the positive against the oracle's P(long-driven | history, target "
        "category): Pearson and Spearman correlation, and the α-AUC against the posterior (each instance counts as "
        "long-driven with weight P and as short-driven with weight 1 − P: the share of posterior-weighted "
        "(long, short) pairs that α orders correctly; the oracle's own posterior scores the ceiling of this column). Beside it, the α-AUC against the true driver, and the oracle's own, the best any "
        "model can reach. Parentheses: each seed's value; brackets: 95 % bootstrap intervals over test instances "
        "(one seed, or the oracle).", "",
        "| model | Pearson | Spearman | α-AUC vs posterior | α-AUC vs true driver |", "|---|---|---|---|---|",
    ]
    for m in models:
        if not per_model[m].get("ceiling", {}).get("alpha_vs_posterior"):
            continue
        cells = [_seeds_cell(per_model[m], ("ceiling", "alpha_vs_posterior"), q)
                 for q in ("pearson", "spearman", "alpha_auc_posterior")]
        cells.append(_seeds_cell(per_model[m], ("ground_truth",), "alpha_auc"))
        lines.append(f"| {label(m)} | " + " | ".join(cells) + " |")
    og = oracle["ground_truth"]
    lines.append(f"| *Bayes oracle* | 1 | 1 | {_f(og.get('alpha_auc_posterior'), 3)} | {_ci(og, 'alpha_auc')} |")
    return lines
