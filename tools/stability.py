"""Zero false alarms: certify every bundled implementation under many Hypothesis seeds.

    python tools/stability.py --seeds 20 [--impl pkg.module:Name ...] [--dtypes float64 float32 bfloat16]

Prints, per implementation, the laws that did not pass (a recorded deviation must fail
every time), and a final count of false alarms. Exit status 1 if any.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="number of Hypothesis seeds (default: %(default)s)")
    parser.add_argument("--impl", action="append", default=[], help="pkg.module:Name (default: the bundled ones)")
    parser.add_argument("--max-examples", type=int, default=None, help="examples per law (default: the profile's)")
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32", "bfloat16"],
                        help="certify in each of these dtypes, as the pytest run does (default: %(default)s)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch
    from attnspec.impls import BUNDLED
    from attnspec import load_impl
    from attnspec.runner import FAILING, certify

    impls = [load_impl(v) for v in args.impl] or [i for i in BUNDLED if "cpu" in i.capabilities.devices]
    alarms, runs, start = 0, 0, time.perf_counter()
    for impl in impls:
        for seed in range(args.seeds):
            for name in args.dtypes:
                for r in certify(impl, seed=seed, max_examples=args.max_examples, dtype=getattr(torch, name)):
                    runs += r.status != "not claimed"
                    # a scoped deviation may or may not be drawn: pass and deviation are both right
                    if r.status in FAILING:
                        alarms += 1
                        print(f"FALSE ALARM {impl.name} seed={seed} {name} {r.law}: {r.status}\n{r.message}\n",
                              flush=True)
        print(f"{impl.name}: {args.seeds} seeds done", flush=True)
    print(f"{alarms} false alarms in {runs} law runs over {len(impls)} implementations x {args.seeds} seeds "
          f"x {len(args.dtypes)} dtypes "
          f"({time.perf_counter() - start:.0f} s)")
    return 1 if alarms else 0


if __name__ == "__main__":
    sys.exit(main())
