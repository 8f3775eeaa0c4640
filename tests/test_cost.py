"""clsr.stages.cost: the cost table from the runs' own timings, on a constructed metrics tree."""
import json

import pytest

from clsr.stages import cost


def write(root, group, name, dataset, chash, epochs, train_s, valid_s, test_s, seed=0):
    p = root / "metrics" / group / f"{name}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    hist = [{"epoch": e + 1, "train_seconds": train_s, "valid_seconds": valid_s} for e in range(epochs)]
    p.write_text(json.dumps({"dataset": dataset, "model": "clsr", "seed": seed, "config_hash": chash,
                             "compute": {"threads": 1}, "epochs_run": epochs, "history": hist,
                             "test_seconds": test_s}))


def test_cost_table_counts_a_shared_run_once(tmp_path):
    write(tmp_path, "main/ml100k", "clsr_seed0", "ml100k", "aaa", 4, 100.0, 5.0, 30.0)
    write(tmp_path, "main/ml100k", "din_seed0", "ml100k", "bbb", 2, 50.0, 5.0, 10.0)
    write(tmp_path, "ablation/contrastive", "triplet_k3_seed0", "ml100k", "aaa", 4, 100.0, 5.0, 30.0)  # = main
    write(tmp_path, "ablation/contrastive", "bpr_k3_seed0", "ml100k", "ccc", 6, 100.0, 5.0, 30.0)
    table = cost.run(tmp_path).set_index("group")
    main, abl, total = table.loc["main/ml100k"], table.loc["ablation/contrastive"], table.loc["**all**"]
    assert (main["runs trained"], main["runs reused"]) == (2, 0)
    assert (abl["runs trained"], abl["runs reused"]) == (1, 1)
    assert main["total h"] == pytest.approx((4 * 105 + 30 + 2 * 55 + 10) / 3600)
    assert abl["train h"] == pytest.approx(600 / 3600)  # the shared run is not counted again
    assert total["runs trained"] == 3 and total["total h"] == pytest.approx(main["total h"] + abl["total h"])
    md = (tmp_path / "tables" / "cost.md").read_text()
    assert "| main/ml100k | 2 | 0 |" in md and "1 torch thread(s)" in md
    assert json.loads((tmp_path / "metrics" / "cost.json").read_text())["groups"][0]["group"] == "main/ml100k"


def test_cost_without_runs_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run metrics"):
        cost.run(tmp_path)
