"""Examples run vs examples compared, per law and dtype, for one implementation.

    python tools/informative.py attnspec.impls.sdpa:SDPA [--seed 0] [--laws a,b]

Prints one row per law: status and ``compared/examples`` in float64, float32 and bfloat16
(the figures the JSON report records; see attnspec.tolerances.informative for the rule).
"""
from __future__ import annotations

import argparse

from attnspec import load_impl
from attnspec.checks import LAWS
from attnspec.runner import run_law
from attnspec.requirements import DEVICE_DTYPES, dtype_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("impl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--laws", default="")
    ap.add_argument("--dtypes", default="", help="comma-separated, e.g. bfloat16 (default: every CPU dtype)")
    args = ap.parse_args()
    impl = load_impl(args.impl)
    names = [n for n in args.laws.split(",") if n] or list(LAWS)
    dtypes = [d for d in DEVICE_DTYPES["cpu"] if not args.dtypes or dtype_name(d) in args.dtypes.split(",")]
    print(f"{'law':44s}" + "".join(f"{dtype_name(d):>24s}" for d in dtypes))
    for name in names:
        cells = []
        for dtype in dtypes:
            r = run_law(LAWS[name], impl, dtype=dtype, seed=args.seed)
            cells.append(f"{r.status} {r.compared}/{r.examples}" if r.examples else r.status)
        print(f"{name:44s}" + "".join(f"{c:>24s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
