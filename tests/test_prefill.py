"""clsr.prefill: the notebook parameters of a rendered stage command (the end-to-end pipeline test runs it)."""
from clsr.prefill import notebook_parameters


def test_notebook_parameters_of_a_stage_command():
    cmd = ('mkdir -p reports/notebooks/ablation && papermill -k clsr --cwd . --no-progress-bar --log-output '
           'notebooks/03_train.ipynb reports/notebooks/ablation/x.ipynb -p dataset ml100k -p model clsr -p seed 2 '
           '-p group contrastive -p variant none_k5 -p overrides "model.contrastive=none,model.recent_k=5"')
    assert notebook_parameters(cmd) == {"dataset": "ml100k", "model": "clsr", "seed": "2", "group": "contrastive",
                                        "variant": "none_k5", "overrides": "model.contrastive=none,model.recent_k=5"}
