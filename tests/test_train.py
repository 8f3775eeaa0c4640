"""Trainer: learning, determinism, resume after an interruption, outputs, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from clsr.cli import main as cli_main
from clsr.data.protocol import ProtocolConfig, build
from clsr.data.synthetic import generate
from clsr.train import TrainConfig, clip_per_tensor_, fit, pick_device

SMALL = {"n_users": 120, "n_items": 200, "n_categories": 8, "mean_events": 30, "seed": 3}
TRAIN = {"epochs": 2, "patience": 2, "batch_size": 128, "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def small_data():
    df = generate(SMALL)
    return build(df, ProtocolConfig(max_len=20, test_negatives=19, seed=0), name="small")


def test_two_epochs_learn_and_are_bit_identical(small_data, tmp_path):
    a = fit(small_data, "clsr", {}, TRAIN, run_dir=tmp_path / "a")
    b = fit(small_data, "clsr", {}, TRAIN, run_dir=tmp_path / "b")
    assert a.metrics["valid"]["gauc"] > 0.6, a.metrics["valid"]
    assert a.metrics["test"] == b.metrics["test"]
    assert [r["loss_total"] for r in a.history] == [r["loss_total"] for r in b.history]
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k


def test_resume_after_interruption_matches_uninterrupted(small_data, tmp_path):
    cfg = dict(TRAIN, epochs=3, patience=3)
    full = fit(small_data, "clsr", {}, cfg, run_dir=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        fit(small_data, "clsr", {}, cfg, run_dir=tmp_path / "cut", stop_after_epochs=1)
    assert not (tmp_path / "cut" / "metrics.json").exists()  # an interrupted run leaves no result that looks complete
    resumed = fit(small_data, "clsr", {}, cfg, run_dir=tmp_path / "cut")
    assert resumed.metrics["test"] == full.metrics["test"]
    assert [r["loss_total"] for r in resumed.history] == [r["loss_total"] for r in full.history]


def test_checkpoint_of_other_config_is_not_resumed(small_data, tmp_path, capsys):
    """An unfinished run's checkpoint of another configuration is ignored (a finished one is refused:
    tests/test_train_reliability.py)."""
    with pytest.raises(KeyboardInterrupt):
        fit(small_data, "clsr", {}, dict(TRAIN, epochs=2), run_dir=tmp_path / "r", stop_after_epochs=1)
    res = fit(small_data, "clsr", {"contrastive": "bpr"}, dict(TRAIN, epochs=1), run_dir=tmp_path / "r")
    assert "another configuration" in capsys.readouterr().out
    assert [r["epoch"] for r in res.history] == [1]


def test_checkpoint_of_other_training_code_is_not_resumed(small_data, tmp_path, capsys, monkeypatch):
    """A changed model or trainer must retrain, not silently reuse weights trained by the old code."""
    import clsr.train as T

    cfg = dict(TRAIN, epochs=2, patience=2)
    with pytest.raises(KeyboardInterrupt):
        fit(small_data, "clsr", {}, cfg, run_dir=tmp_path / "r", stop_after_epochs=1)
    monkeypatch.setattr(T, "code_fingerprint", lambda: "changed-code")
    res = fit(small_data, "clsr", {}, cfg, run_dir=tmp_path / "r")
    assert "another version of the training code" in capsys.readouterr().out
    assert [r["epoch"] for r in res.history] == [1, 2]  # trained from scratch
    assert res.metrics["code_hash"] == "changed-code"


def test_code_fingerprint_covers_the_model_files():
    import clsr.train as T

    fp = T.code_fingerprint()
    assert len(fp) == 12 and fp == T.code_fingerprint()
    assert "models" in T.TRAINING_CODE and "train.py" in T.TRAINING_CODE


def test_code_fingerprint_ignores_prose_but_not_code(tmp_path):
    """Docstrings and comments do not decide what a run computes; a changed constant or a C file does."""
    import clsr.train as T

    def digest(text, name="m.py"):
        f = tmp_path / name
        f.write_text(text)
        return T.source_for_hash(f)

    base = digest('"""Module."""\ndef f(x):\n    """Eq. (1)."""\n    return x * 2\n')
    assert digest('"""Other words."""\n# a comment\ndef f(x):\n    """Eq. (2), reworded."""\n\n    return x * 2  # why\n') == base
    assert digest('def f(x):\n    return x * 2\n') == base
    assert digest('"""Module."""\ndef f(x):\n    """Eq. (1)."""\n    return x * 3\n') != base
    assert digest('def f(x):\n    """only a docstring"""\n') == digest('def f(x):\n    pass\n')
    assert digest("int f(void) { return 2; } /* c */", "k.c") != digest("int f(void) { return 2; }", "k.c")


def test_metrics_file_fields(small_data, tmp_path):
    fit(small_data, "clsr", {}, dict(TRAIN, epochs=1), run_dir=tmp_path / "r")
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    for key in ("test", "valid", "best_epoch", "seconds_per_epoch", "train_instances_per_s", "parameters", "config_hash"):
        assert key in m
    for key in ("auc", "gauc", "mrr", "ndcg@2", "hit@2"):
        assert 0.0 <= m["test"][key] <= 1.0
    assert m["test"]["candidates"] == 20
    hist = json.loads((tmp_path / "r" / "history.json").read_text())
    assert hist[0]["epoch"] == 1 and "valid_gauc" in hist[0]


def test_early_stopping_uses_validation_only(small_data, tmp_path, monkeypatch):
    """Selection must never look at the test split: every evaluation batch of valid comes first, then each test
    protocol (sampled, uniform, full ranking) is scored exactly once, at the end."""
    import clsr.data.batches as Bm
    import clsr.evaluation as Ev

    calls = []
    real_batches, real_full = Bm.eval_batches, Ev.full_ranking

    def spy_batches(data, split, *a, **kw):
        calls.append(split)
        return real_batches(data, split, *a, **kw)

    def spy_full(model, data, split, *a, **kw):
        calls.append(f"full:{split}")
        return real_full(model, data, split, *a, **kw)

    monkeypatch.setattr(Bm, "eval_batches", spy_batches)
    monkeypatch.setattr(Ev, "full_ranking", spy_full)
    fit(small_data, "clsr", {}, dict(TRAIN, epochs=3, patience=3), run_dir=None)
    n_valid = calls.count("valid")
    assert n_valid == 3 and calls[:n_valid] == ["valid"] * n_valid
    tail = calls[n_valid:]
    assert tail.count("test") == 1 and all(c != "valid" for c in tail)
    assert sorted(tail) == sorted(set(tail)), f"a test protocol was scored twice: {tail}"


def test_clip_per_tensor_matches_tf_clip_by_norm():
    p1 = torch.nn.Parameter(torch.zeros(3))
    p2 = torch.nn.Parameter(torch.zeros(2))
    p1.grad = torch.tensor([3.0, 4.0, 0.0])  # norm 5 -> scaled to norm 2
    p2.grad = torch.tensor([0.6, 0.8])  # norm 1 -> unchanged
    clip_per_tensor_([p1, p2], 2.0)
    assert torch.allclose(p1.grad, torch.tensor([1.2, 1.6, 0.0]))
    assert torch.allclose(p2.grad, torch.tensor([0.6, 0.8]))


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="CUDA is not available"):
            pick_device("cuda")


def test_bad_train_key_names_it():
    from clsr.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="epoch"):
        from_dict(TrainConfig, {"epoch": 3}, "train")


def test_cli_prepare_train_evaluate(tmp_path, monkeypatch, capsys):
    """The CLI on a CSV log: prepare, train one epoch, evaluate the best checkpoint."""
    df = generate(SMALL)
    csv = tmp_path / "log.csv"
    df[["user", "item", "category", "ts"]].rename(columns={"user": "uid", "ts": "time"}).to_csv(csv, index=False)
    params = tmp_path / "params.yaml"
    params.write_text(
        "datasets:\n  mine:\n    source: {name: csv, path: " + str(csv) + ", columns: {user: uid, item: item, category: category, ts: time}}\n"
        "    protocol: {max_len: 20, test_negatives: 19}\n"
        "train: {epochs: 1, batch_size: 128, progress: false}\n"
        "pipeline: {datasets: [mine], counterfactual_datasets: [mine], ablation_dataset: mine, "
        "disentanglement_dataset: mine}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert cli_main(["prepare", "--dataset", "mine", "--params", str(params)]) == 0
    assert (tmp_path / "data" / "prepared" / "mine" / "stats.json").exists()
    assert cli_main(["train", "--dataset", "mine", "--model", "clsr", "--params", str(params), "--run-dir", "r",
                     "--set", "model.contrastive=bpr"]) == 0
    out = capsys.readouterr().out
    assert '"gauc"' in out
    cfg = json.loads((tmp_path / "r" / "metrics.json").read_text())["config"]
    assert cfg["model_config"]["contrastive"] == "bpr"
    assert cli_main(["evaluate", "--run-dir", "r"]) == 0
    # a bad key is a clear error, exit code 2
    assert cli_main(["train", "--dataset", "mine", "--params", str(params), "--set", "model.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli_main(["prepare", "--dataset", "unknown", "--params", str(params)]) == 2
    assert "unknown" in capsys.readouterr().err
