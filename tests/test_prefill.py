"""clsr.prefill: the notebook parameters of a rendered stage command (the end-to-end pipeline test runs it)."""
from clsr.prefill import notebook_parameters


def test_notebook_parameters_of_a_stage_command():
    cmd = ('mkdir -p reports/notebooks/ablation && papermill -k clsr --cwd . --no-progress-bar --log-output '
           'notebooks/03_train.ipynb reports/notebooks/ablation/x.ipynb -p dataset ml100k -p model clsr -p seed 2 '
           '-p group contrastive -p variant none_k5 -p overrides "model.contrastive=none,model.recent_k=5"')
    assert notebook_parameters(cmd) == {"dataset": "ml100k", "model": "clsr", "seed": "2", "group": "contrastive",
                                        "variant": "none_k5", "overrides": "model.contrastive=none,model.recent_k=5"}


def test_side_by_side_lines_carry_their_run():
    import io

    from clsr.prefill import LinePrefix, PlannedRun, run_label

    out = io.StringIO()
    s = LinePrefix(out, "(r) ")
    s.write("epoch 1 ")
    s.write("done\nepoch 2\n")
    s.write("")
    s.write("a\nb")
    assert out.getvalue() == "(r) epoch 1 done\n(r) epoch 2\n(r) a\n(r) b"
    assert run_label(PlannedRun("s", "ml100k", "clsr", 2, "model.recent_k=1")) == "ml100k clsr seed 2 model.recent_k=1"
