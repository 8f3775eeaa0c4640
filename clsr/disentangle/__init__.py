"""The disentanglement study (notebook 05, stage `disentanglement`): does CLSR separate long- and
short-term interests better than models without self-supervision? Every model is read out as trained,
with α = 1 (long-term interest only) and with α = 0 (short-term only), on counterfactual test sets (any
dataset) and against the generator's ground truth (synthetic data). Nothing is tuned toward the paper's
claim: every number is computed from the models and the stored data.

    counterfactual.py  the counterfactual test sets: recent-only and shuffled histories
    truth.py           the synthetic ground truth (driver, topic, profile) and the probe batches
    measures.py        the measures, their chance levels and bootstrap intervals (arrays in, numbers out)
    evaluate.py        one model through the study: scores (clsr.scoring) -> measures, per-user values
    verdicts.py        CLSR against each other model: paired bootstraps over test users, seeds pooled
    report.py          the markdown table reports/tables/disentanglement.md
    figures.py         the figures that compare models over seeds (the one-model figures: `clsr.plots`)

The stage body (which models, seeds and datasets, what is written where) is in `clsr.stages.disentanglement`.
"""
