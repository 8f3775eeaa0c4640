"""Numeric regression: CLSR on the tiny configuration reaches a recorded validation/test GAUC.

How the values were recorded: this exact configuration (a small synthetic dataset of 120 users, the
protocol with L = 20 and 1 + 19 test candidates, CLSR with its defaults trained for 3 epochs with seed 0,
batch 128 and one torch thread) was run once on the project's 2-core CPU machine with
`python tests/test_regression.py`, which prints the numbers; they were copied below. On the same CPU the run is bit-identical (see test_train.py); the tolerance absorbs
small floating-point differences and is below what a change to the model moves: measured the same way
(first recording), switching the contrastive loss off gave test GAUC 0.637 (−0.043) and model seed 1
gave 0.610 (−0.070).

Re-recorded once, on purpose: the packed recurrences with a hand-written backward (session 2) compute
the same function — equal to the autograd cells to 1e-15 in float64 (tests/test_clsr_model.py,
tests/test_recurrence.py) — but sum in a different order in float32, and three epochs of Adam on this
tiny set amplify that rounding: valid 0.7208 -> 0.7104, test 0.6803 -> 0.6601, with the old
recurrences still giving exactly the old values. A change of summation order alone can therefore move
these numbers by up to ~0.02; after such a change, prove the function unchanged in float64 first, then
re-record here and say so.

Recorded a second pair, and both re-recorded, on purpose (session 3), after three changes that keep the
function and change only float32 rounding:
- the C kernels of clsr/models/native.py (fused batch norm + ReLU, the DIN product layer, the recurrent
  steps, the padded positions of the DIN scorers folded into one weighted row) — tests/test_native.py
  checks a whole CLSR step, every loss part and every gradient, against the torch ops to 1e-9 in float64;
- torch's fused Adam (same update);
- measured here: torch ops + the old Adam still give exactly the previous values (0.7104 / 0.6601);
  torch ops + fused Adam give 0.7333 / 0.6702; kernels + old Adam 0.7438 / 0.6645; kernels + fused Adam
  (the default) 0.6875 / 0.6535. So rounding alone moves this tiny set's GAUC by up to ~0.05, more than
  the tolerance: the test pins the numbers of each path, and a change that is meant to keep the function
  must first be proven equal in float64, then re-recorded here with the reason.
Both pairs are kept; the test checks the one of the path that runs here (`native.available()`).

Re-recorded both pairs, on purpose (session 4), after changes that keep the function and change float32
rounding: the Time4LSTM's input side as one hand-differentiated Function (`recurrence.Time4Inputs`, the
time gates' sigmoid inside the LSTM kernel), one packed copy of the history shared by the recurrent nets
(gradients summed before one index_add), the embedding backward as a plain loop, the DIN first layer's
bias added with the per-query term instead of the per-position one, and the biases of the recurrent nets'
input projections and of the scorers' second layer added inside the kernels instead of inside the GEMMs.
Proven equal first in
float64: tests/test_native.py (a whole CLSR step, kernels vs torch ops, to 1e-9), tests/test_recurrence.py
(gradcheck of `Time4Inputs` and `LSTMSequence` with time gates; fused vs autograd runner for Time4LSTM).
Torch ops 0.7333 / 0.6702 -> 0.7104 / 0.6667; kernels 0.6875 / 0.6535 -> 0.7313 / 0.6430 (each step of
the session moved them by up to 0.05 in either direction; rounding only).
"""
from __future__ import annotations

import pytest
import torch

from clsr.data.protocol import ProtocolConfig, build
from clsr.data.synthetic import generate
from clsr.models import native
from clsr.train import fit

RECORDED_TORCH_OPS = {"valid_gauc": 0.7104166666666667, "test_gauc": 0.6666666666666666}
RECORDED_NATIVE = {"valid_gauc": 0.73125, "test_gauc": 0.6429824561403509}
RECORDED = RECORDED_NATIVE if native.available() else RECORDED_TORCH_OPS
TOLERANCE = 0.01


SOURCE = {"n_users": 120, "n_items": 200, "n_categories": 8, "mean_events": 30, "seed": 3}
TRAIN = {"epochs": 3, "patience": 3, "batch_size": 128, "seed": 0, "progress": False, "threads": 1}


def run_tiny() -> dict:
    data = build(generate(SOURCE), ProtocolConfig(max_len=20, test_negatives=19, seed=0), name="small")
    threads = torch.get_num_threads()
    try:
        res = fit(data, "clsr", {}, TRAIN, run_dir=None)
    finally:
        torch.set_num_threads(threads)
    return {"valid_gauc": res.metrics["valid"]["gauc"], "test_gauc": res.metrics["test"]["gauc"]}


def test_clsr_tiny_gauc_matches_recorded():
    got = run_tiny()
    for key, want in RECORDED.items():
        assert want is not None, "record the values first: python tests/test_regression.py"
        assert got[key] == pytest.approx(want, abs=TOLERANCE), (key, got)


if __name__ == "__main__":
    print(run_tiny())
