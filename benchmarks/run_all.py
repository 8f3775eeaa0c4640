"""`make bench`: every benchmark, results in reports/benchmarks/.

    python benchmarks/run_all.py            # training/eval speed, runs side by side vs threads per run,
                                            # data preparation at 1M and 10M rows
                                            # + data-parallel training on a Kuaishou-sized log (15M instances,
                                            #   ~4 min, 6 GiB peak, 1.1 GB of scratch in data/raw/bench)
    python benchmarks/run_all.py --full     # also the 100M-row raw-Taobao preparation (minutes, ~4 GB of scratch)
"""
import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true")
    a = ap.parse_args()
    rows = ["1000000", "10000000"] + (["100000000"] if a.full else [])
    subprocess.run([sys.executable, str(HERE / "bench_train.py")], check=True)
    subprocess.run([sys.executable, str(HERE / "bench_jobs.py")], check=True)
    subprocess.run([sys.executable, str(HERE / "bench_prepare.py"), "--rows", *rows], check=True)
    subprocess.run([sys.executable, str(HERE / "bench_distributed.py")], check=True)


if __name__ == "__main__":
    main()
