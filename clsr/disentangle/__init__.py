"""The disentanglement study (notebook 05, stage `disentanglement`): does CLSR separate long- and
short-term interests better than models without self-supervision? Every model is read out as trained,
with α = 1 (long-term interest only) and with α = 0 (short-term only), on counterfactual test sets (any
dataset) and against the generator's ground truth (synthetic data). Nothing is tuned toward the paper's
claim: every number is computed from the models and the stored data.

    counterfactual.py  the counterfactual test sets: recent-only and shuffled histories
    truth.py           the synthetic ground truth (driver, topic, profile) and the probe batches
    measures.py        the measures, their chance levels and bootstrap intervals (arrays in, numbers out)
    evaluate.py        one model through the study: scores (clsr.scoring) -> measures
    report.py          the markdown table reports/tables/disentanglement.md

The figures are in `clsr.plots`, the stage body (which models, which datasets, what is written where)
in `clsr.stages.disentanglement`.
"""
