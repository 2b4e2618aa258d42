"""Certify every GPU kernel adapter on CUDA within five minutes, and write the results into ``docs/cuda.md``.

    python tools/cuda_kernels.py --plan            # the GPU adapters and the CUDA cases each claims (no GPU needed)
    python tools/cuda_kernels.py --run             # on a GPU machine: certify them, then write docs/cuda.md

``--run`` certifies each adapter of :data:`attnspec.impls.kernels.BUNDLED` that claims ``cuda`` (SDPA's flash,
efficient and cuDNN kernels, flash-attn's ``flash_attn_func``, ``flash_attn_varlen_func`` and
``flash_attn_with_kvcache``, torch's ``varlen_attn``, xformers) in one pytest run per adapter, ``-n`` the number
of GPUs (each worker keeps one: :mod:`attnspec.gpus`), under one deadline for all (``--budget``, 280 s: what is
left when the deadline comes is reported as not run). An adapter whose package is absent skips, saying why. The
results go between the ``cuda-kernels`` markers of ``docs/cuda.md``: per adapter and dtype the pass / fail / not
claimed / skipped counts, and every failure's message under a heading that asks for its explanation. Without CUDA
it says so, writes nothing and exits with status 2. attnspec must be installed in this Python.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- cuda-kernels:begin -->", "<!-- cuda-kernels:end -->"
COLUMNS = ("pass", "fail", "error", "deviation", "not claimed", "skipped")
NO_CUDA = "CUDA is not available on this machine: no GPU kernel was certified, and docs/cuda.md is left as it is"


def gpu_adapters() -> list:
    """``(origin, adapter)`` of each bundled kernel adapter that claims CUDA."""
    from attnspec.impls.kernels import BUNDLED
    return [(a.origin, a) for a in BUNDLED if "cuda" in a.capabilities.devices]


def plan() -> str:
    """Markdown: each GPU adapter, its entry point, and the kernel laws it claims on CUDA per dtype."""
    import torch

    from attnspec.checks import laws_for
    from attnspec.requirements import decide, device_dtypes, dtype_name
    dtypes = device_dtypes(gpu_adapters()[0][1].capabilities, "cuda")
    lines = ["| adapter | entry | " + " | ".join(dtype_name(d) for d in dtypes) + " |",
             "|---|---|" + "---:|" * len(dtypes)]
    for origin, adapter in gpu_adapters():
        counts = [sum(decide(law, adapter.capabilities, "cuda", d).claimed for law in laws_for(adapter)) for d in dtypes]
        lines.append(f"| `{origin}` | {adapter.capabilities.entry} | " + " | ".join(map(str, counts)) + " |")
    here = "CUDA is available" if torch.cuda.is_available() else "CUDA is not available"
    return "\n".join(lines) + f"\n\nOn the machine that printed this table, {here}.\n"


def certify(origin: str, workers: int, seconds: float, report: Path) -> tuple:
    """One pytest run of the suite on ``origin`` on CUDA: ``(exit status or None if out of time, seconds)``."""
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "attnspec.suite", "--impl", origin, "--attnspec-devices", "cuda",
           "--attnspec-report", str(report), "-p", "no:cacheprovider", "-q", "-n", str(workers)]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=max(seconds, 1))
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start
    return done.returncode, time.perf_counter() - start


def render(results: list, environment: dict, budget: float) -> str:
    """The docs/cuda.md section: ``results`` holds ``(origin, exit status, seconds, JSON report or None)``."""
    lines = [BEGIN, "## Kernels on CUDA (`tools/cuda_kernels.py`)", "",
             f"Run on {datetime.date.today().isoformat()} with `python tools/cuda_kernels.py --run` "
             f"(a {budget:.0f} s budget for all): {environment.get('gpu')}, torch {environment.get('torch')}, "
             f"CUDA {environment.get('cuda')}, {environment.get('gpus')} GPU(s), one pytest-xdist worker each.", "",
             "| adapter | dtype | " + " | ".join(COLUMNS) + " | seconds |", "|---|---|" + "---:|" * (len(COLUMNS) + 1)]
    failures = []
    for origin, status, seconds, report in results:
        if report is None:
            lines.append(f"| `{origin}` | every dtype | not run: " + ("out of time" if status is None else
                                                                        f"pytest exit status {status}") + " |" * 6)
            continue
        for impl in report["implementations"].values():
            for dtype, laws in impl["verdicts"].get("cuda", {}).items():
                counts = Counter(v["status"] for v in laws.values())
                lines.append(f"| `{origin}` | {dtype} | " + " | ".join(str(counts.get(c, 0)) for c in COLUMNS)
                             + f" | {seconds:.0f} |")
                failures += [(origin, dtype, law, v) for law, v in laws.items() if v["status"] in ("fail", "error")]
    lines += ["", f"### Failures ({len(failures)}): each needs an explanation", ""]
    lines += ["None."] if not failures else []
    for origin, dtype, law, verdict in failures:
        lines += [f"#### `{origin}` · {law} · cuda {dtype}", "", "Explanation: TO BE WRITTEN.", "", "```text",
                  (verdict.get("detail") or "").strip(), "```", ""]
    return "\n".join(lines + ["", END])


def write(section: str, path: Path) -> None:
    text = path.read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def run(budget: float, out: Path) -> int:
    import torch
    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    environment = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                   "gpus": gpus}
    deadline, results = time.perf_counter() + budget, []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (origin, _) in enumerate(gpu_adapters()):
            report = Path(scratch) / f"{i}.json"
            left = deadline - time.perf_counter()
            status, seconds = certify(origin, gpus, left, report) if left > 5 else (None, 0.0)
            results.append((origin, status, seconds, json.loads(report.read_text()) if report.exists() else None))
            print(f"{origin}: {'out of time' if status is None else f'exit status {status}'}, {seconds:.0f} s",
                  flush=True)
    write(render(results, environment, budget), out)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", action="store_true", help="print the GPU adapters and the cases each claims")
    mode.add_argument("--run", action="store_true", help="certify them on CUDA, then write the docs/cuda.md section")
    parser.add_argument("--budget", type=float, default=280.0, metavar="SECONDS",
                        help="the wall time for every adapter together. Default: %(default)r")
    parser.add_argument("--out", default=str(ROOT / "docs" / "cuda.md"), help="the page to write the section into")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget={args.budget!r}, but should be a positive number of seconds")
    if args.plan:
        print(plan())
        return 0
    return run(args.budget, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
