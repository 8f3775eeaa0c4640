"""CUDA check of CLSR's fast paths, for a machine with a GPU (none is needed anywhere else).

    PYTHONPATH=. python benchmarks/cuda_check.py [--out reports/benchmarks] [--epochs 1]

1. Equivalence on the GPU in float64: the packed recurrences with a hand-written backward
   (clsr.fast.recurrence) against the cells stepped under autograd — outputs, final states and every
   gradient, for the GRU, LSTM and Time4LSTM cells and the joint GRU pair — and a whole CLSR
   forward + backward with ``fused_recurrences`` on and off.
2. Speed on the GPU in float32 on ml100k (data/prepared/ml100k, made by `make repro` or
   `python -m clsr prepare ml100k`): `clsr.train.fit` for full epochs with ``fused_recurrences`` on and
   off (seconds per training epoch, test scoring seconds, test GAUC), so the effect on speed and on the
   metrics is measured rather than assumed.

Writes cuda.json and cuda.md to --out; exits 1 if an equivalence check fails.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clsr import fast  # noqa: E402
from clsr.models.cells import TFGRUCell, TFLSTMCell, Time4LSTMCell, run_gru_pair, run_rnn  # noqa: E402


def max_diff(a, b) -> float:
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def check_cells(dev) -> dict:
    """Max abs difference fused vs autograd runner, over outputs, finals and all gradients (float64)."""
    res = {}
    g = torch.Generator(device="cpu").manual_seed(0)
    for kind in ("gru", "lstm", "time4lstm"):
        torch.manual_seed(0)
        B, L, D, H = 64, 30, 40, 40
        cell = {"gru": TFGRUCell(D, H), "lstm": TFLSTMCell(D, H), "time4lstm": Time4LSTMCell(D, H)}[kind]
        cell = cell.double().to(dev)
        width = D + 2 if kind == "time4lstm" else D
        x = torch.randn(B, L, width, dtype=torch.float64, generator=g).to(dev).requires_grad_()
        h0 = torch.randn(B, H, dtype=torch.float64, generator=g).to(dev).requires_grad_()
        lengths = torch.randint(0, L + 1, (B,), generator=g).to(dev)
        w_o = torch.randn(B, L, H, dtype=torch.float64, generator=g).to(dev)
        w_f = torch.randn(B, H, dtype=torch.float64, generator=g).to(dev)
        outs = []
        for fused in (True, False):
            with contextlib.nullcontext() if fused else fast.disabled():  # fast twin, or the reference
                o, f = run_rnn(cell, x, lengths, h0=h0)
            grads = torch.autograd.grad((o * w_o).sum() + (f * w_f).sum(), [x, h0, *cell.parameters()])
            outs.append([o, f, *grads])
        res[kind] = max(max_diff(a, b) for a, b in zip(*outs))
    # joint GRU pair vs two separate GRUs
    torch.manual_seed(1)
    a, b = TFGRUCell(40, 40).double().to(dev), TFGRUCell(40, 40).double().to(dev)
    x = torch.randn(64, 30, 40, dtype=torch.float64, device=dev, requires_grad=True)
    h0 = torch.randn(64, 40, dtype=torch.float64, device=dev, requires_grad=True)
    lengths = torch.randint(0, 31, (64,), device=dev)
    params = [x, h0, *a.parameters(), *b.parameters()]
    fa, fb = run_gru_pair(a, b, x, lengths, h0_a=h0)
    g1 = torch.autograd.grad(fa.sum() + 2 * fb.sum(), params)
    with fast.disabled():
        sa = run_rnn(a, x, lengths, h0=h0)[1]
        sb = run_rnn(b, x, lengths)[1]
    g2 = torch.autograd.grad(sa.sum() + 2 * sb.sum(), params)
    res["gru_pair"] = max([max_diff(fa, sa), max_diff(fb, sb)] + [max_diff(p, q) for p, q in zip(g1, g2)])
    return res


def check_model(dev, data) -> float:
    """Whole CLSR step (float64): max abs difference of logits, loss and gradients, fused on vs off."""
    import numpy as np

    from clsr.data import batches as Bt
    from clsr.models.registry import build_model
    from clsr.train import data_settings, model_sizes

    L, r = data_settings(data)
    batch = next(Bt.train_batches(data, 200, 4, L, r, np.random.default_rng(0))).to(dev)
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        m = build_model("clsr", model_sizes(data), {"fused_recurrences": fused}).double().to(dev)
        out = m(batch)
        loss = m.compute_loss(batch, out)["total"]
        loss.backward()
        results.append([out["logits"], loss.reshape(1)] + [p.grad for p in m.parameters() if p.grad is not None])
    return max(max_diff(a, b) for a, b in zip(*results))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    dev = torch.device("cuda")
    from clsr.data.prepare import load_prepared
    from clsr.train import fit

    data = load_prepared("ml100k", ROOT / "data" / "prepared")
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    res["equivalence_float64_max_abs_diff"] = {**check_cells(dev), "clsr_step": check_model(dev, data)}
    print(json.dumps(res, indent=1), flush=True)
    ok = all(v < 1e-9 for v in res["equivalence_float64_max_abs_diff"].values())
    res["runs"] = {}
    for seed in a.seeds:
        for fused in (True, False):
            r = fit(data, "clsr", {"fused_recurrences": fused},
                    {"epochs": a.epochs, "patience": a.epochs, "device": "cuda", "progress": False, "seed": seed})
            m = r.metrics
            row = {"seconds_per_epoch": m["seconds_per_epoch"], "test_seconds": m.get("test_seconds"),
                   "test_gauc": m["test"]["gauc"], "valid_gauc": m["valid"]["gauc"]}
            res["runs"].setdefault("fused" if fused else "autograd", []).append(row)
            print(seed, fused, row, flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [
        "# CLSR on a GPU (benchmarks/cuda_check.py)", "",
        f"Device: {res['device']}, torch {res['torch']}. ml100k, default configuration, {a.epochs} epoch(s), "
        f"seeds {a.seeds} (mean ± std over seeds; the two variants alternate, fused first).", "",
        "| check (float64, max abs difference, fused vs autograd cells) | value |", "|---|---|",
    ]
    lines += [f"| {k} | {v:.2e} |" for k, v in res["equivalence_float64_max_abs_diff"].items()]
    lines += ["", "| recurrences | train s/epoch | test scoring s | valid GAUC | test GAUC |", "|---|---|---|---|---|"]

    def ms(rows, key, fmt):
        v = np.array([r[key] for r in rows], dtype=float)
        return f"{v.mean():{fmt}} ± {v.std():{fmt}}"

    for k, rows in res["runs"].items():
        lines.append(f"| {k} | {ms(rows, 'seconds_per_epoch', '.1f')} | {ms(rows, 'test_seconds', '.2f')} | "
                     f"{ms(rows, 'valid_gauc', '.4f')} | {ms(rows, 'test_gauc', '.4f')} |")
    (out / "cuda.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
