"""How much room the tolerance rule leaves correct implementations, per dtype.

    python tools/tolerance_margin.py [--examples 100] [--dtypes float64 float32 bfloat16]

For every correct implementation here (the bundled ones that run on the CPU, the
installed third-party ones, the zoo's clean drop-in and its 8 equivalent variants)
it draws problems in each dtype at input scales 1, 8 and 30, and prints the worst
ratio of the error against the float64 reference to the allowed error
(``attnspec.tolerances.bound``), for outputs and for weights. A ratio near 1 means the
rule is about to raise false alarms; the bound's tightness shows as the median
allowed error relative to the output's largest element, at input scale 1.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attnspec.impls import BUNDLED, thirdparty  # noqa: E402
from attnspec import DropIn  # noqa: E402
from attnspec import tolerances as T  # noqa: E402
from attnspec.case import Case  # noqa: E402
from attnspec.checks import LAWS  # noqa: E402
from attnspec.requirements import decide  # noqa: E402
from attnspec.strategies import problems  # noqa: E402
from tests.zoo.kill_matrix import CORRECT  # noqa: E402


def margins(adapter, dtype, examples: int) -> dict:
    worst = {"output": 0.0, "weights": 0.0}
    relative = []
    law = "output_matches_reference"
    scope = decide(LAWS[law], adapter.capabilities, "cpu", dtype).scope  # what that law draws for this adapter

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    @given(problems(scope), st.sampled_from([1.0, 8.0, 30.0]))
    def probe(p, scale):
        p = p.replace(input_scale=scale)
        case = Case(adapter, p, "cpu", LAWS[law], scope=scope)
        module, inputs, out, w = case.run()
        exp = case.expected(inputs, case.weights_of(module))
        if not bool(torch.isfinite(exp.output).all()):
            return  # the float64 logits do not fit the dtype: nothing is required
        for name, got, ref, tol in (("output", out, exp.output, exp.output_tol),
                                    ("weights", w, exp.weights, exp.weights_tol)):
            if got is not None and ref is not None and tol > 0:
                worst[name] = max(worst[name], T.max_error(got, ref) / tol)
        if scale == 1.0:
            relative.append(exp.output_tol / max(T.magnitude(exp.output), 1e-300))

    probe()
    return {**worst, "relative": statistics.median(relative) if relative else float("nan")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32", "bfloat16"])
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    adapters = [a for a in BUNDLED if "cpu" in a.capabilities.devices] + thirdparty.available() + \
        [DropIn(cls, name=name) for name, cls in CORRECT]
    print(f"{'implementation':28s} {'dtype':9s} {'worst output':>12s} {'worst weights':>13s} {'median tol/|out| (scale 1)':>27s}")
    overall = 0.0
    for adapter in adapters:
        for name in args.dtypes:
            dtype = getattr(torch, name)
            if dtype not in adapter.capabilities.dtypes:
                continue
            if not decide(LAWS["output_matches_reference"], adapter.capabilities, "cpu", dtype).claimed:
                continue
            m = margins(adapter, dtype, args.examples)
            overall = max(overall, m["output"], m["weights"])
            print(f"{adapter.name:28s} {name:9s} {m['output']:12.3f} {m['weights']:13.3f} {m['relative']:27.3g}",
                  flush=True)
    print(f"worst ratio of error to allowed error, over everything: {overall:.3f}")


if __name__ == "__main__":
    main()
