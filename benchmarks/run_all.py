"""`make bench`: every benchmark, results in reports/benchmarks/.

    python benchmarks/run_all.py            # training/eval speed, runs side by side vs threads per run,
                                            # data preparation at 1M and 10M rows
                                            # + data-parallel training on a 1.5M-instance Kuaishou-like log
    python benchmarks/run_all.py --full     # also the 100M-row raw-Taobao preparation (minutes, ~4 GB of scratch)
                                            # and the distributed benchmark at the Kuaishou size (15M instances)
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
    instances = ["15000000"] if a.full else ["1500000"]
    subprocess.run([sys.executable, str(HERE / "bench_distributed.py"), "--instances", *instances], check=True)


if __name__ == "__main__":
    main()
