"""Data-parallel training (clsr.distributed): 2 gloo processes under torchrun on the CPU, on tiny data.

- `torchrun -m clsr train` with 2 processes trains, writes one run folder (rank 0), and its validation and
  test metrics equal a single-process evaluation of the checkpoint it wrote, exactly (sharded evaluation);
- a 2-process run killed after its first epoch and resumed with 2 processes ends exactly where the
  uninterrupted 2-process run ends; resumed with 1 process, it continues (another world size is allowed);
- the batch shares of the ranks make up the global batch, and with world 1 the batches are today's;
- every process memory-maps the prepared arrays;
- the loss parts of 2 ranks, and their gradients, average (as DDP averages) to the one-process loss of the
  global batch, also for the terms defined on the batch's set of rows (embedding L2, discrepancy, the masked
  means of the contrastive terms), which each share computed alone would miss; with world 1 nothing changes.

Run as a script (``python -m torch.distributed.run ... tests/test_distributed.py DATA RUN_DIR STOP``) this
file is the worker of the resume test: `fit` stopped after STOP epochs, as a kill after a checkpoint would;
with ``loss-terms OUT_DIR`` it is the worker of the loss-term test (each rank saves its parts and gradients).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_users": 60, "n_items": 120, "n_categories": 6, "mean_events": 22, "seed": 5}
PROTOCOL = {"max_len": 12, "test_negatives": 19}
TRAIN = {"epochs": 3, "patience": 3, "batch_size": 70, "eval_batch_size": 37, "progress": False, "threads": 1}


def worker(data_dir: str, run_dir: str, stop: str) -> None:
    from clsr.data.store import PreparedData
    from clsr.distributed import shutdown
    from clsr.train import fit

    try:
        fit(PreparedData.load(data_dir), "clsr", {}, TRAIN, run_dir=run_dir,
            stop_after_epochs=int(stop) if int(stop) > 0 else None)
    finally:
        shutdown()


#: the ranks' shares of the 7 instances of `loss_case` (unequal, as `clsr.distributed.local_share` cuts them)
SHARES = ((0, 4), (4, 7))
#: the rows of the set-defined terms: embedding L2 (the tables), discrepancy (user tables), contrastive (u, p)
SET_DEFINED = ("tokens.item.weight", "tokens.cate.weight", "user_long.weight", "user_short.weight",
               "out.u_long", "out.u_short", "out.p_long", "out.p_short")


def loss_case():
    """A CLSR model (float64), a global batch of 7 instances and its model outputs as leaf tensors (the loss
    terms alone, no batch norm). The shares [0:4] and [4:7] both hold users 1 and 3 and many item and
    category rows (vocabularies of 40 and 30), and each table also rows of one share only; histories longer than the threshold 5: 3 of share 0, 1 of share 1."""
    from clsr.data.batches import Batch
    from clsr.models.base import ModelSizes
    from clsr.models.clsr import CLSR, CLSRConfig

    torch.manual_seed(0)
    model = CLSR(CLSRConfig(embed_l2=0.1, layer_l2=0.01), ModelSizes(n_users=6, n_items=40, n_cates=30)).double()
    with torch.no_grad():
        for t in (model.tokens.item, model.tokens.cate, model.user_long, model.user_short):
            t.weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(1)
    B, C, L, d = 7, 4, 8, 40
    length = torch.tensor([8, 6, 3, 7, 2, 8, 5])
    mask = (torch.arange(L)[None] < length[:, None]).double()
    batch = Batch(
        user=torch.tensor([1, 2, 3, 2, 3, 4, 1]),
        hist_item=torch.randint(1, 40, (B, L), generator=g) * mask.long(),
        hist_cate=torch.randint(1, 30, (B, L), generator=g) * mask.long(),
        mask=mask, length=length, time_to_now=mask.clone(), time_from_first=mask.clone(),
        cand_item=torch.randint(1, 40, (B, C), generator=g), cand_cate=torch.randint(1, 30, (B, C), generator=g),
        user_row=torch.arange(B), instance=torch.full((B,), -1),
    )
    shapes = {"logits": (B, C), "u_long": (B, d), "u_short": (B, C, d), "p_long": (B, d), "p_short": (B, d)}
    out = {k: torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_() for k, shape in shapes.items()}
    return model, batch, out


def share_of(batch, out, lo: int, hi: int):
    """Instances lo..hi-1 of a batch and of its outputs (slices of the global leaves)."""
    from dataclasses import fields, replace

    return replace(batch, **{f.name: getattr(batch, f.name)[lo:hi] for f in fields(batch)}), \
        {k: v[lo:hi] for k, v in out.items()}


def gradients(model, out) -> dict:
    """Every parameter's and output leaf's gradient (zeros where none arrived)."""
    named = [*model.named_parameters(), *((f"out.{k}", v) for k, v in out.items())]
    return {k: v.grad.clone() if v.grad is not None else torch.zeros_like(v) for k, v in named}


def dien_aux_parts(ctx, lo: int, hi: int, length: list[int]) -> dict:
    """DIEN's auxiliary loss on this rank's share of 7 instances with histories of `length`: the rank's part
    with `ctx`, and the share's own mean and pair count (same negatives: same torch seed)."""
    from dataclasses import replace

    from clsr.models.base import ModelSizes
    from clsr.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("dien", ModelSizes(n_users=6, n_items=40, n_cates=30),
                        {"aux_loss_weight": 0.5, "init_std": 0.3}).double()
    _, batch, _ = loss_case()
    length = torch.tensor(length)
    mask = (torch.arange(8)[None] < length[:, None]).double()
    batch = replace(batch, length=length, mask=mask, hist_item=batch.hist_item * mask.long(),
                    hist_cate=batch.hist_cate * mask.long())
    batch, _ = share_of(batch, {}, lo, hi)
    out = model(batch)
    torch.manual_seed(5)
    part = model.extra_losses(batch, out, ctx)["aux"]
    torch.manual_seed(5)
    own = model.extra_losses(batch, out)["aux"]
    pairs = int((batch.length - 1).clamp(min=0).sum())
    return {"part": float(part), "own": float(own), "pairs": pairs}


def loss_terms_worker(out_dir: str) -> None:
    from clsr import distributed as D

    torch.set_num_threads(1)
    ctx = D.context(torch.device("cpu"))
    try:
        lo, hi = SHARES[ctx.rank]
        model, batch, out = loss_case()
        parts = model.compute_loss(*share_of(batch, out, lo, hi), ctx)
        parts["total"].backward()
        aux = {name: dien_aux_parts(ctx, lo, hi, length) for name, length in
               (("both", [8, 6, 3, 7, 2, 8, 5]), ("rank0_only", [8, 6, 3, 7, 1, 1, 1]))}
        torch.save({"parts": {k: v.detach() for k, v in parts.items()}, "grads": gradients(model, out), "aux": aux},
                   Path(out_dir) / f"rank{ctx.rank}.pt")
    finally:
        D.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "loss-terms":
        loss_terms_worker(sys.argv[2])
    else:
        worker(*sys.argv[1:4])
    raise SystemExit(0)

import pytest  # noqa: E402  (not needed by the workers above)

from clsr.data import batches as B  # noqa: E402
from clsr.data.prepare import prepare  # noqa: E402
from clsr.data.store import PreparedData, map_npz  # noqa: E402
from clsr.data.synthetic import generate  # noqa: E402


def torchrun(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS` (a free port, one thread each)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A prepared tiny dataset and a params file naming it."""
    root = tmp_path_factory.mktemp("dist")
    params = {"datasets": {"tiny": {"source": {"name": "synthetic"}, "protocol": PROTOCOL}},
              "pipeline": {"datasets": ["tiny"], "counterfactual_datasets": ["tiny"], "ablation_dataset": "tiny",
                           "disentanglement_dataset": "tiny"}}
    df = generate(TINY)
    prepare("tiny", params, root / "raw", root / "prepared", interactions=df)
    (root / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    return root


@pytest.fixture(scope="module")
def two_process_run(tiny):
    """The uninterrupted 2-process run, through the command line."""
    run = tiny / "runs" / "full"
    sets = [x for k, v in TRAIN.items() for x in ("--set", f"train.{k}={json.dumps(v)}")]
    res = torchrun("-m", "clsr", "train", "--dataset", "tiny", "--model", "clsr", "--params", str(tiny / "params.yaml"),
                   "--prepared-dir", str(tiny / "prepared"), "--run-dir", str(run), *sets)
    return run, res


def single_process_evaluation(run: Path, data: PreparedData):
    from clsr.config import from_dict
    from clsr.evaluation import test_report
    from clsr.train import TrainConfig, evaluate, load_trained

    torch.set_num_threads(1)
    meta = json.loads((run / "metrics.json").read_text())
    cfg = from_dict(TrainConfig, meta["config"]["train"], "train")
    model = load_trained(run, data)
    return meta, evaluate(model, data, "valid", cfg), test_report(model, data, cfg)


def test_two_processes_write_one_run_whose_metrics_equal_one_process_evaluation(tiny, two_process_run):
    from clsr.rundir import load_per_instance

    run, res = two_process_run
    assert res.stdout.count('"best_epoch"') == 1, res.stdout  # rank 0 reports, the other rank stays quiet
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt", "history.json", "last.pt", "metrics.json",
                                                      "test_per_instance.npz"]
    data = PreparedData.load(tiny / "prepared" / "tiny")
    meta, valid, (protocols, per) = single_process_evaluation(run, data)
    assert meta["world"] == 2 and meta["compute"]["world"] == 2
    assert len(meta["config"]["train"]) and meta["epochs_run"] == TRAIN["epochs"]
    # the sharded, gathered evaluation is the single-process one, to the last bit
    best_row = json.loads((run / "history.json").read_text())[meta["best_epoch"] - 1]
    assert {k: v for k, v in valid.items() if isinstance(v, float)} == {
        k[len("valid_"):]: v for k, v in best_row.items() if k.startswith("valid_") and k != "valid_seconds"}
    assert protocols["sampled"] == meta["test"] and protocols["uniform"] == meta["test_uniform"]
    assert protocols["full"] == meta["test_full"]
    stored = load_per_instance(run / "test_per_instance.npz")
    assert sorted(stored) == sorted(per) and all(np.array_equal(stored[k], per[k]) for k in per)
    assert meta["valid"]["gauc"] > 0.5  # it learned something in 3 epochs


def test_resume_after_a_kill_with_the_same_or_another_world_size(tiny, two_process_run, capsys):
    from clsr.train import fit

    full_run, _ = two_process_run
    cut = tiny / "runs" / "cut"
    data_dir = str(tiny / "prepared" / "tiny")
    res = torchrun(__file__, data_dir, str(cut), "1", check=False)  # both ranks stop after epoch 1's checkpoint
    assert res.returncode != 0 and (cut / "last.pt").exists() and not (cut / "metrics.json").exists()
    ck = torch.load(cut / "last.pt", weights_only=True)
    assert ck["epoch"] == 1 and ck["compute"]["world"] == 2
    one = tiny / "runs" / "cut-then-one-process"
    shutil.copytree(cut, one)

    torchrun(__file__, data_dir, str(cut), "0")  # resumed with the same world size
    full = json.loads((full_run / "metrics.json").read_text())
    resumed = json.loads((cut / "metrics.json").read_text())
    for key in ("test", "test_uniform", "test_full", "valid", "best_epoch"):
        if key == "valid":
            full[key].pop("seconds"), resumed[key].pop("seconds")
        assert resumed[key] == full[key], key
    losses = [[r["loss_total"] for r in json.loads((d / "history.json").read_text())] for d in (full_run, cut)]
    assert losses[0] == losses[1]

    # another world size: one process continues the 2-process checkpoint (documented, not bit-identical)
    data = PreparedData.load(data_dir)
    res1 = fit(data, "clsr", {}, TRAIN, run_dir=one)
    assert "written by 2 process(es), continued by 1" in capsys.readouterr().out
    assert [r["epoch"] for r in res1.history] == [1, 2, 3]
    assert res1.history[0]["loss_total"] == losses[0][0]  # epoch 1 is the 2-process one
    assert "world" not in res1.metrics["compute"] and "world" not in res1.metrics  # one process records no world


def test_rank_shares_make_up_the_global_batch_and_world_one_is_unchanged(tiny):
    from clsr.distributed import negative_rng

    data = PreparedData.load(tiny / "prepared" / "tiny")
    args = (data, 50, 4, 12, 86400.0)
    plain = list(B.train_batches(*args, np.random.default_rng(3)))
    explicit = list(B.train_batches(*args, np.random.default_rng(3), rank=0, world=1))
    for a, b in zip(plain, explicit, strict=True):
        assert torch.equal(a.cand_item, b.cand_item) and torch.equal(a.hist_item, b.hist_item)
    shares = [list(B.train_batches(*args, np.random.default_rng(3), rank=r, world=3, neg_rng=negative_rng(0, 1, r)))
              for r in range(3)]
    n = len(data.instances["train"])
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) in (len(plain), len(plain) - 1)
    assert len(shares[0]) == B.n_train_batches(data, 50, 4, world=3)
    assert len(plain) == B.n_train_batches(data, 50, 4)
    for step, parts in enumerate(zip(*shares)):
        sizes = [p.size for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == min(50, n - 50 * step)
        # the same instances as one process's global batch, in the same order (targets and histories)
        joined = torch.cat([p.cand_item[:, 0] for p in parts])
        assert torch.equal(joined, plain[step].cand_item[:, 0])
        assert torch.equal(torch.cat([p.hist_item for p in parts]), plain[step].hist_item)
        for p in parts:  # each rank's negatives are targets of its own share, never the instance's positive
            assert set(p.cand_item[:, 1:].flatten().tolist()) <= set(p.cand_item[:, 0].tolist())
            assert not (p.cand_item[:, 1:] == p.cand_item[:, :1]).any()


def test_every_process_memory_maps_the_prepared_arrays(tiny):
    folder = tiny / "prepared" / "tiny"
    data = PreparedData.load(folder)
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        plain = {k: z[k] for k in z.files}
    mapped = map_npz(folder / "arrays.npz")
    assert sorted(mapped) == sorted(plain)
    for k, v in plain.items():
        assert mapped[k].dtype == v.dtype and np.array_equal(mapped[k], v), k
    for arr in (data.event_item, data.event_ts, data.user_offsets, data.instances["train"].user, data.item_ids):
        assert isinstance(arr.base, np.memmap) and Path(arr.base.filename).resolve() == (folder / "arrays.npz").resolve()


def test_two_ranks_loss_parts_and_gradients_average_to_the_one_process_ones(tmp_path):
    from clsr.distributed import Context

    torchrun(__file__, "loss-terms", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.set_num_threads(1)
    model, batch, out = loss_case()
    parts = model.compute_loss(batch, out)  # one process, the global batch
    parts["total"].backward()
    want = gradients(model, out)
    assert set(ranks[0]["parts"]) == set(parts) == {"rec", "l2", "contrastive", "discrepancy", "total"}
    for k, v in parts.items():  # DDP's mean over the ranks: the one-process value ...
        torch.testing.assert_close((ranks[0]["parts"][k] + ranks[1]["parts"][k]) / 2, v.detach(), rtol=1e-13, atol=0)
    for k, g in want.items():  # ... and gradient, to float64 rounding
        torch.testing.assert_close((ranks[0]["grads"][k] + ranks[1]["grads"][k]) / 2, g, rtol=1e-12, atol=1e-17)
    assert all(want[k].abs().sum() > 0 for k in SET_DEFINED)

    # each share's own terms, weighted W·b_r/b as a mean over instances is, average to the one-process
    # gradient of the recommendation loss and the layer L2 only: the set-defined terms need the other shares
    model, batch, out = loss_case()
    for lo, hi in SHARES:
        (model.compute_loss(*share_of(batch, out, lo, hi))["total"] * (hi - lo) / 7).backward()
    per_share = gradients(model, out)
    for k, g in want.items():
        if k in SET_DEFINED:
            assert not torch.allclose(per_share[k], g, rtol=1e-6, atol=0), k
        else:
            torch.testing.assert_close(per_share[k], g, rtol=1e-12, atol=1e-17)

    # one process with a world-1 context: the very same numbers, no collective
    model, batch, out = loss_case()
    alone = model.compute_loss(batch, out, Context(0, 1, torch.device("cpu")))
    assert all(torch.equal(alone[k], parts[k]) for k in parts)

    # DIEN's auxiliary loss: the mean over the global batch's pairs, also when one rank has no pair
    for name in ("both", "rank0_only"):
        aux = [r["aux"][name] for r in ranks]
        n = sum(a["pairs"] for a in aux)
        assert aux[0]["pairs"] > 0 and (aux[1]["pairs"] > 0) == (name == "both")
        want_aux = sum(a["own"] * a["pairs"] for a in aux) / n
        assert abs((aux[0]["part"] + aux[1]["part"]) / 2 - want_aux) <= 1e-12 * abs(want_aux)
