"""Kill counts per dtype: each zoo mutant certified in one dtype at a time.

    python tools/dtype_kills.py [--dtypes float64 float32 bfloat16] [--seed 0] [--jobs 2]

The kill matrix (tests/zoo/kill_matrix.py) lets each problem draw its dtype. This
fixes it, to show how sharp the suite stays in low precision: a mutant killed in
float64 but not in bfloat16 is a bug that bfloat16's rounding hides from the
tolerance. The correct variants run every law in every dtype: a failure there is
a false alarm.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attnspec import DropIn  # noqa: E402
from attnspec.runner import certify  # noqa: E402
from tests.zoo import mutants as zoo  # noqa: E402
from tests.zoo.kill_matrix import CORRECT  # noqa: E402


def one(name: str, dtype_name: str, seed: int, stop_first: bool):
    warnings.simplefilter("ignore")
    cls = dict(CORRECT + zoo.MUTANTS)[name]
    start = time.perf_counter()
    results = certify(DropIn(cls, name=name), dtype=getattr(torch, dtype_name), seed=seed,
                      stop_at_first_failure=stop_first, shrink=False)
    failed = [r.law for r in results if r.status == "fail"]
    errors = [f"{r.law}: {r.message.splitlines()[0][:120]}" for r in results if r.status == "error"]
    return name, dtype_name, failed, errors, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    tasks = [(n, d, args.seed, True) for d in args.dtypes for n, _ in zoo.MUTANTS]
    tasks += [(n, d, args.seed, False) for d in args.dtypes for n, _ in CORRECT]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(one, *zip(*tasks)))
    mutant_names = {n for n, _ in zoo.MUTANTS}
    print(f"seed {args.seed}; torch {torch.__version__}")
    print(f"{'dtype':10s} {'mutants killed':>15s} {'false alarms':>13s} {'errors':>7s}")
    for d in args.dtypes:
        mine = [r for r in rows if r[1] == d]
        killed = sum(1 for n, _, failed, _, _ in mine if n in mutant_names and failed)
        alarms = [(n, failed) for n, _, failed, _, _ in mine if n not in mutant_names and failed]
        errors = sum(len(r[3]) for r in mine)
        print(f"{d:10s} {killed:>8d}/{len(mutant_names):<6d} {len(alarms):>6d}/{len(CORRECT):<6d} {errors:>7d}")
        for n, _, failed, errs, _ in mine:
            if n in mutant_names and not failed:
                print(f"  survives in {d}: {n}")
            for e in errs:
                print(f"  error in {d}: {n}: {e}")
        for n, failed in alarms:
            print(f"  false alarm in {d}: {n}: {', '.join(failed)}")


if __name__ == "__main__":
    main()
