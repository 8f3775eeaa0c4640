"""clsr.prefill: the notebook parameters of a rendered stage command, the side-by-side output and the --only
selection (the end-to-end pipeline test runs prefill itself)."""
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


def test_only_keeps_the_stages_a_pattern_names_and_refuses_one_that_names_none():
    import pytest

    from clsr.config import ConfigError
    from clsr.prefill import PlannedRun, select

    stages = [PlannedRun(f"train@{ds}-{m}-{s}", ds, m, s, "") for ds in ("ml100k", "synthetic")
              for m in ("clsr", "slirec", "ncf") for s in (0, 1)]
    stages += [PlannedRun("ablation_contrastive@none-1-0", "ml100k", "clsr", 0, "model.contrastive=none"),
               PlannedRun("disentanglement", "synthetic", "clsr_nocon", 0, "")]
    picked = select(stages, ["train@*-clsr-*", "disentanglement", "ablation_contrastive@none-*"])
    assert [st.stage for st in picked] == ["train@ml100k-clsr-0", "train@ml100k-clsr-1", "train@synthetic-clsr-0",
                                           "train@synthetic-clsr-1", "ablation_contrastive@none-1-0",
                                           "disentanglement"]
    assert select(stages, ["train@ml100k-ncf-1"]) == [stages[5]]
    with pytest.raises(ConfigError, match=r"--only train@\*-sasrec-\*: matches no training stage.*train@…"):
        select(stages, ["train@*-clsr-*", "train@*-sasrec-*"])
