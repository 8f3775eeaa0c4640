"""Stage bodies: one module per pipeline notebook, each with a `run(ctx, ...)` the notebook calls once.

    data.py             01_data.ipynb             data@<dataset>
    protocol.py         02_protocol.ipynb         protocol@<dataset>
    train.py            03_train.ipynb            train@…, ablation_*@…
    ablations.py        04_ablations.ipynb        ablation_report
    disentanglement.py  05_disentanglement.ipynb  disentanglement
    report.py           06_report.ipynb           report

`ctx` is `clsr.pipeline.context()`: the project root, the validated params and where outputs go.
"""
