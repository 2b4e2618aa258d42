"""Certify every implementation on CUDA and write ``docs/cuda.md``; or show what would run.

    python tools/cuda_report.py --plan               # CUDA cases per implementation (no GPU needed)
    python tools/cuda_report.py --run [--jobs 8]     # on a GPU machine: run, then write docs/cuda.md
    python tools/cuda_report.py --from report.json   # write docs/cuda.md from an earlier run's JSON

``--run`` calls ``pytest --attnspec-devices cpu,cuda`` with the JSON report on, so the
cross-device law has its CPU side; attnspec must be installed in this Python (a machine
without network takes a wheel: ``pip wheel --no-deps .`` here, ``pip install --no-deps`` there;
docs/cuda.md says how the first GPU run did it). ``docs/cuda.md`` records the date, GPU,
torch and CUDA versions, per implementation and dtype the pass / fail / deviation /
not-claimed / skipped counts on CUDA, and every failure with its message, under a
heading that asks for its explanation: the report is not done until each has one.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COLUMNS = ("pass", "fail", "error", "deviation", "not claimed", "skipped")


def plan() -> str:
    """Markdown: for each implementation and CUDA dtype, how many laws it claims there."""
    import torch

    from attnspec.impls import BUNDLED, thirdparty
    from attnspec.checks import LAWS
    from attnspec.requirements import DEVICE_DTYPES, decide, dtype_name
    dtypes = DEVICE_DTYPES["cuda"]
    lines = ["| implementation | " + " | ".join(dtype_name(d) for d in dtypes) + " |",
             "|---|" + "---:|" * len(dtypes)]
    totals = [0] * len(dtypes)
    for impl in list(BUNDLED) + thirdparty.available():
        counts = [sum(decide(law, impl.capabilities, "cuda", d).claimed for law in LAWS.values()) for d in dtypes]
        totals = [t + c for t, c in zip(totals, counts)]
        lines.append(f"| `{impl.name}` | " + " | ".join(str(c) for c in counts) + " |")
    lines.append("| **all** | " + " | ".join(f"**{t}**" for t in totals) + " |")
    lines.append(f"\nEach cell counts the laws (of {len(LAWS)}) claimed in that dtype on CUDA; "
                 f"{sum(totals)} cases in all.")
    here = "CUDA is available" if torch.cuda.is_available() else \
        "CUDA is not available, so every one of these cases skips with that reason"
    return "\n".join(lines) + f"\n\nOn the machine that printed this table, {here}.\n"


def run(json_path: Path, jobs: int) -> int:
    cmd = [sys.executable, "-m", "pytest", "tests/test_conformance.py", "--attnspec-devices", "cpu,cuda",
           "--attnspec-report", str(json_path), "-p", "no:cacheprovider", "-q", "-n", str(jobs)]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def render(report: dict, command: str) -> str:
    env = report["environment"]
    by = defaultdict(Counter)
    failures = []
    for impl, entry in report["implementations"].items():
        for dtype, laws in entry["verdicts"].get("cuda", {}).items():
            for law, result in laws.items():
                by[(impl, dtype)][result["status"]] += 1
                if result["status"] in ("fail", "error"):
                    failures.append((impl, dtype, law, result))
    date = datetime.date.today().isoformat()
    lines = [
        "# attnspec on CUDA", "",
        f"Run on {date} with `{command}`.", "",
        "| | |", "|---|---|",
        f"| GPU | {env.get('gpu')} |",
        f"| torch | {env.get('torch')} |",
        f"| CUDA | {env.get('cuda')} |",
        f"| attnspec | {env.get('attnspec')} |",
        f"| hypothesis profile | {env.get('hypothesis_profile')} |",
        "| TF32 | off during every check |", "",
        "## Results on CUDA, per implementation and dtype", "",
        "| implementation | dtype | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
    ]
    for (impl, dtype), counts in sorted(by.items()):
        lines.append(f"| `{impl}` | {dtype} | " + " | ".join(str(counts.get(c, 0)) for c in COLUMNS) + " |")
    lines += ["", f"## Failures ({len(failures)}): each needs an explanation", ""]
    if not failures:
        lines.append("None.")
    for impl, dtype, law, result in failures:
        lines += [f"### `{impl}` · {law} · cuda {dtype}", "", "Explanation: TO BE WRITTEN.", "",
                  "```", (result.get("detail") or "").strip(), "```", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", action="store_true", help="print the CUDA cases each implementation claims")
    mode.add_argument("--run", action="store_true", help="run the suite on cpu and cuda, then write the report")
    mode.add_argument("--from", dest="source", metavar="JSON", help="write the report from this JSON report")
    parser.add_argument("--jobs", type=int, default=8, help="pytest-xdist workers for --run (default 8)")
    parser.add_argument("--json", default="cuda-report.json", help="where --run writes the JSON report")
    parser.add_argument("--out", default=str(ROOT / "docs" / "cuda.md"), help="the Markdown report to write")
    args = parser.parse_args(argv)
    if args.plan:
        print(plan())
        return 0
    command = f"python tools/cuda_report.py --from {args.source}"
    source = Path(args.source) if args.source else Path(args.json)
    if args.run:
        if importlib.util.find_spec("attnspec") is None:
            print(f"attnspec is not installed in {sys.executable}: pip install --no-deps . (or a wheel of it) first",
                  file=sys.stderr)
            return 2
        import torch
        if not torch.cuda.is_available():
            print("CUDA is not available on this machine: nothing to run (see --plan)", file=sys.stderr)
            return 2
        rc = run(source, args.jobs)
        command = f"python tools/cuda_report.py --run --jobs {args.jobs} (pytest exit status {rc})"
    Path(args.out).write_text(render(json.loads(source.read_text()), command))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
