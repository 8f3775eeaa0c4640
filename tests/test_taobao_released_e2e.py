"""params-taobao.yaml end to end on a small set of files in the released format (docs/protocol.md §4):
its dataset section, pointed at generated train_data / valid_data / test_data, prepares exactly the
files' instances and candidates, and a model trains on them for one epoch with finite metrics."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clsr.config import load_params
from clsr.data.batches import eval_batches
from clsr.data.official import FILES, export_official
from clsr.data.prepare import prepare
from clsr.data.store import PreparedData

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400
N_VALID, N_TEST = 4, 99  # the released candidate counts


@dataclass
class Line:
    user: str
    item: str
    cate: str
    ts: int
    history: list[tuple[str, str, int]]  # (item, category, ts), oldest first

    def tsv(self, label: int, item: str | None = None, cate: str | None = None) -> str:
        h_items = ",".join(h[0] for h in self.history)
        h_cates = ",".join(h[1] for h in self.history)
        h_ts = ",".join(str(h[2]) for h in self.history)
        return (f"{label}\t{self.user}\t{item or self.item}\t{cate or self.cate}\t{self.ts}\t"
                f"{h_items}\t{h_cates}\t{h_ts}\n")


def write_released_files(folder: Path, seed: int = 0) -> dict:
    """Sequences of 80 users over 6 days; the last day is test, the day before valid (the released time
    split), every event after a user's first is an instance with its full history. Valid and test blocks
    hold the positive and N distinct negatives (any other item, some never seen in a sequence).
    Returns {split: [(Line, [(neg item, neg cate), ...]), ...]} in file order."""
    rng = np.random.default_rng(seed)
    n_items = 130
    item_cate = {f"{1000 + i}": f"{50 + i % 9}" for i in range(n_items)}
    seq_items = list(item_cate)[:110]  # items 1110.. appear only as negatives
    t_end = 1_512_000_000
    lines = {"train": [], "valid": [], "test": []}
    for u in range(80):
        n = int(rng.integers(2, 21))
        ts = np.sort(t_end - rng.integers(0, 6 * DAY, size=n))
        items = rng.choice(seq_items, size=n)
        events = [(str(i), item_cate[str(i)], int(t)) for i, t in zip(items, ts)]
        for pos in range(1, n):
            item, cate, t = events[pos]
            split = "test" if t > t_end - DAY else "valid" if t > t_end - 2 * DAY else "train"
            lines[split].append((Line(f"u{u}", item, cate, t, events[:pos]), None))
    out = {}
    for split in ("train", "valid", "test"):
        blocks = []
        n_neg = {"valid": N_VALID, "test": N_TEST}.get(split)
        for line, _ in lines[split]:
            negs = None
            if n_neg:
                others = [i for i in item_cate if i != line.item]
                negs = [(i, item_cate[i]) for i in rng.choice(others, size=n_neg, replace=False)]
            blocks.append((line, negs))
        out[split] = blocks
    for split, blocks in out.items():
        with open(folder / FILES[split], "w") as f:
            for line, negs in blocks:
                f.write(line.tsv(1))
                for item, cate in negs or []:
                    f.write(line.tsv(0, item, cate))
    return out


@pytest.fixture(scope="module")
def taobao(tmp_path_factory):
    """(params of params-taobao.yaml, the generated blocks, the prepared dataset, its folder)."""
    tmp = tmp_path_factory.mktemp("taobao")
    files = tmp / "released"
    files.mkdir()
    blocks = write_released_files(files)
    params = load_params(ROOT / "params-taobao.yaml")
    params["datasets"]["taobao"]["source"]["folder"] = str(files)
    data = prepare("taobao", params, raw_dir=tmp / "raw", out_dir=tmp / "prepared")
    return params, blocks, files, data, tmp


def test_the_settings_file_names_the_released_source_and_schedule():
    params = load_params(ROOT / "params-taobao.yaml")
    assert params["pipeline"]["datasets"] == ["taobao"]
    assert params["datasets"]["taobao"]["source"]["name"] == "taobao-released"
    assert params["datasets"]["taobao"]["protocol"]["max_len"] == 50
    assert params["datasets"]["taobao"]["protocol"]["time_unit"] == 86.4
    train = params["train"]
    assert (train["epochs"], train["patience"], train["batch_size"], train["lr"]) == (100, 5, 500, 1.0e-3)
    assert train["max_train_instances"] == 0 and train["ties"] == "pessimistic"
    assert {"clsr", "slirec", "gru4rec", "din"} <= set(params["pipeline"]["models"])


def test_instances_and_candidates_are_exactly_those_of_the_files(taobao):
    _, blocks, files, data, tmp = taobao
    assert PreparedData.load(tmp / "prepared" / "taobao").n_events == data.n_events
    for split, rows in blocks.items():
        inst = data.instances[split]
        assert len(inst) == len(rows), split
        for i, (line, negs) in enumerate(rows):
            start = int(data.user_offsets[inst.user[i]])
            target = start + int(inst.pos[i])
            assert str(data.user_ids[inst.user[i]]) == line.user
            assert (str(data.item_ids[data.event_item[target]]), str(data.cate_ids[data.event_cate[target]]),
                    int(data.event_ts[target])) == (line.item, line.cate, line.ts)
            history = [(str(data.item_ids[data.event_item[e]]), str(data.cate_ids[data.event_cate[e]]),
                        int(data.event_ts[e])) for e in range(start, target)]
            assert history == line.history
            if negs is not None:
                cand = data.candidates[split]
                assert [str(x) for x in data.item_ids[cand.item[i]]] == [line.item] + [n[0] for n in negs]
                assert [str(x) for x in data.cate_ids[cand.cate[i]]] == [line.cate] + [n[1] for n in negs]
    # written back in the released format, the dataset gives the very same bytes
    export_official(data, tmp / "again")
    for fname in FILES.values():
        assert (tmp / "again" / fname).read_bytes() == (files / fname).read_bytes(), fname
    # beside the files' candidates: the same test instances with uniform negatives of the same width
    uni = data.candidates["test_uniform"]
    assert uni.item.shape == (len(blocks["test"]), 1 + N_TEST)
    assert np.array_equal(uni.item[:, 0], data.candidates["test"].item[:, 0])
    assert sum(b.size for b in eval_batches(data, "test_uniform", 64, 50, 86.4)) == len(blocks["test"])


def _numbers(tree) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, (list, tuple)):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_a_model_trains_one_epoch_with_the_settings(taobao):
    from clsr.train import fit

    params, blocks, _, data, tmp = taobao
    train = {**params["train"], "epochs": 1, "batch_size": 50, "eval_batch_size": 100, "threads": 1}
    res = fit(data, "clsr", params["models"]["clsr"], train, run_dir=tmp / "run")
    assert len(res.history) == 1
    for split in ("valid", "test"):
        values = _numbers(res.metrics[split])
        assert values and all(math.isfinite(v) for v in values), (split, res.metrics[split])
    assert 0.0 <= res.metrics["test"]["gauc"] <= 1.0
