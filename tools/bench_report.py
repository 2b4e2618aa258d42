"""Turn a pytest-benchmark JSON from ``tests/bench`` into ``docs/benchmarks.md`` and ``docs/scaling.png``.

    python tools/bench_report.py .benchmarks/run.json [--out-dir docs]

Prints the Markdown table (grouped by shape: each implementation's median time and
its ratio to ``torch-mha(need_weights=False)`` of the same shape and pass) and
writes the report with the date, torch version, thread count and the exact
command. The log-log scaling plot (time against sequence length, one line per
implementation) needs matplotlib; without it the plot is skipped with a note.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections import defaultdict
from pathlib import Path

BASELINE = "torch-mha(need_weights=False)"
MODES = ("forward", "forward+backward")
OURS = "sdpa"
SLOW_LIMIT = 2.0  # a fixed seed implementation should be within this factor of the baseline

# Why an implementation cannot be within SLOW_LIMIT of the baseline, by design (keyed by adapter name).
DESIGN_NOTES = {
    "seed000.heads_list":
        "the seed's design is one `SelfAttention` module per head, called in a Python loop: each head "
        "runs three `Linear` layers of width E/H, its own score matmul, softmax and matmul, and the "
        "heads are concatenated, so a call issues about 7·H small kernels (and their Python overhead) "
        "where torch issues one wide projection and one batched attention; on small shapes that "
        "overhead is most of the time",
    "seed001.multiattention":
        "the seed's design is d2l's `DotProductAttention` behind three separate projections: scores "
        "materialised as (B·H, L, S), divided by √d in a separate pass, softmaxed, always returned, "
        "and the heads moved with copying reshapes (`trans`/`retrans`); torch's fast path does the "
        "same math in fused C++ kernels and its slow path streams keys through SDPA",
    "seed002.view_transpose":
        "the seed's design is explicit `matmul`, `softmax`, `matmul` over materialised (B, H, L, L) "
        "scores after three separate projections; memory traffic grows with L² where the fused "
        "SDPA kernel streams over keys",
    "seed003.talking_heads":
        "talking heads mixes the logits and the weights across heads (`proj_l`, `proj_w`) between "
        "Q·Kᵀ and the softmax and after it, so no fused attention kernel can compute it: the "
        "(B, H, L, L) scores are materialised, permuted to heads-last and back twice and pass through "
        "two extra `Linear` layers, several full passes over L² memory that SDPA never makes",
}


def load(path: Path) -> dict:
    data = json.loads(path.read_text())
    if "benchmarks" not in data:
        sys.exit(f"{path}: not a pytest-benchmark JSON (no 'benchmarks' key)")
    return data


def collect(data):
    """(device, mode, shape) -> {impl: (median seconds, extra_info, stats)}, and the shapes in run order."""
    table = defaultdict(dict)
    shapes = {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "impl" not in info:
            continue
        key = (info["device"], info["mode"], info["shape"])
        table[key][info["impl"]] = (bench["stats"]["median"], info, bench["stats"])
        shapes.setdefault(info["shape"], info)
    return table, shapes


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def ratio_of(table, device, mode, shape, impl):
    """Median time over the baseline's median time (two separate tests)."""
    row = table.get((device, mode, shape), {})
    if impl not in row or BASELINE not in row:
        return None
    return row[impl][0] / row[BASELINE][0]


def paired_of(table, device, mode, shape, impl):
    """The paired ratio (the two timed alternately in one test); the ratio of medians if absent."""
    row = table.get((device, mode, shape), {})
    if impl == BASELINE or impl not in row:
        return ratio_of(table, device, mode, shape, impl)
    paired = row[impl][1].get("paired_ratio")
    return paired if paired is not None else ratio_of(table, device, mode, shape, impl)


def fmt_ratio(r) -> str:
    return "—" if r is None else f"{r:.2f}×"


def not_timed_reasons(data) -> dict:
    """(impl, device, shape) -> reason, and impl -> reason for whole implementations."""
    reasons = {}
    for entry in data.get("attnspec", {}).get("not_timed", []):
        reasons[(entry["impl"], entry.get("device"), entry.get("shape"))] = entry["reason"]
    return reasons


def implementations(table, device) -> list[str]:
    """Ours and the bundled ones first (in run order), then the baselines."""
    seen = {}
    for (dev, _, _), row in table.items():
        if dev == device:
            for impl, (_, info, _) in row.items():
                seen.setdefault(impl, info.get("source", "bundled"))
    order = {"bundled": 1, "--impl": 2, "baseline": 3}
    rank = {name: 0 if name == OURS else order.get(source, 2) for name, source in seen.items()}
    return sorted(seen, key=lambda name: (rank[name], name if rank[name] < 3 else list(seen).index(name)))


def shape_table(shapes) -> list[str]:
    lines = ["| shape | B | L | S | E | H | attention |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, info in shapes.items():
        kind = "self (query is key is value)" if info["self_attention"] else "cross (key is value, kdim = vdim = E)"
        if info.get("scaling"):
            kind += ", scaling plot"
        lines.append(f"| {name} | {info['B']} | {info['L']} | {info['S']} | {info['E']} | {info['H']} | {kind} |")
    return lines


def ratio_summary(table, shapes, device, impls, reasons) -> list[str]:
    """Implementations × shapes: forward / forward+backward paired ratio to the baseline; and the worst."""
    names = list(shapes)
    lines = ["| implementation | " + " | ".join(names) + " | worst |", "|---|" + "---:|" * (len(names) + 1)]
    for impl in impls:
        if impl == BASELINE:
            continue
        cells, worst = [], None
        for shape in names:
            pair = [paired_of(table, device, mode, shape, impl) for mode in MODES]
            if pair == [None, None]:
                cells.append("not claimed" if (impl, device, shape) in reasons else "—")
                continue
            cells.append(" / ".join(fmt_ratio(r) for r in pair))
            worst = max([r for r in pair if r is not None] + ([worst] if worst is not None else []))
        lines.append(f"| {impl} | " + " | ".join(cells) + f" | {fmt_ratio(worst)} |")
    return lines


def timing_table(table, shapes, device, impls) -> list[str]:
    """Grouped by shape: median (ms), ratio of medians and paired ratio, forward and forward+backward."""
    lines = ["| shape | implementation | forward (ms) | ratio | paired | forward+backward (ms) | ratio | paired |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for shape in shapes:
        first = True
        for impl in impls:
            cells = []
            for mode in MODES:
                entry = table.get((device, mode, shape), {}).get(impl)
                ratios = [f(table, device, mode, shape, impl) for f in (ratio_of, paired_of)]
                cells += ["—"] * 3 if entry is None else [ms(entry[0]), *map(fmt_ratio, ratios)]
            if cells == ["—"] * 6:
                continue
            label = impl
            path = table.get((device, "forward", shape), {}).get(impl, (None, {}, None))[1].get("torch_mha_path")
            if path:
                label += f" [forward: {path} path]"
            lines.append(f"| {'**' + shape + '**' if first else ''} | {label} | " + " | ".join(cells) + " |")
            first = False
    return lines


def worst_ratio(table, shapes, device, impl):
    pairs = [(paired_of(table, device, mode, shape, impl), shape, mode) for shape in shapes for mode in MODES]
    pairs = [p for p in pairs if p[0] is not None]
    return max(pairs) if pairs else None


def verdicts(table, shapes, device, impls) -> list[str]:
    lines = []
    worst = worst_ratio(table, shapes, device, OURS)
    if worst:
        ok = worst[0] <= 1.0
        lines.append(f"* **{OURS}**: worst ratio {worst[0]:.2f}× ({worst[1]}, {worst[2]}): "
                     + ("at least as fast as the baseline at every shape, both passes."
                        if ok else "**slower than the baseline somewhere.**"))
    for impl in impls:
        if not impl.startswith("seed"):
            continue
        worst = worst_ratio(table, shapes, device, impl)
        if worst is None:
            continue
        note = DESIGN_NOTES.get(impl, "(no design note recorded: explain it)")
        if worst[0] > SLOW_LIMIT:
            verdict = f"more than {SLOW_LIMIT:g}× slower: {note}."
        elif worst[0] > 0.9 * SLOW_LIMIT:
            verdict = f"within {SLOW_LIMIT:g}×, but close to it (another run may cross it): {note}."
        else:
            verdict = f"within {SLOW_LIMIT:g}× everywhere."
        lines.append(f"* **{impl}**: worst ratio {worst[0]:.2f}× ({worst[1]}, {worst[2]}): {verdict}")
    return lines


BASELINE_STYLES = {BASELINE: dict(color="black", linestyle="--"),
                   "torch-mha(need_weights=True)": dict(color="dimgray", linestyle="--"),
                   "F.scaled_dot_product_attention": dict(color="darkgray", linestyle=":")}


def plot(table, shapes, devices, out: Path) -> str:
    """Log-log time against sequence length for the scaling shapes; returns a note on what happened."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    scaling = sorted((info["L"], name) for name, info in shapes.items() if info.get("scaling"))
    if not scaling:
        return "no scaling shapes in the JSON: no plot"
    devices = [d for d in devices if any(k[0] == d and k[2] == scaling[0][1] for k in table)]
    fig, axes = plt.subplots(len(devices), len(MODES), figsize=(12, 4.8 * len(devices)), squeeze=False)
    for row, device in zip(axes, devices):
        impls = implementations(table, device)
        for ax, mode in zip(row, MODES):
            for impl in impls:
                points = [(L, table[(device, mode, name)][impl][2]["min"] * 1e3) for L, name in scaling
                          if impl in table.get((device, mode, name), {})]
                if len(points) > 1:
                    style = dict(BASELINE_STYLES.get(impl, {}), linewidth=2.2 if impl == OURS else 1.2)
                    ax.plot(*zip(*points), marker="o", markersize=4, label=impl, **style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length L = S")
            ax.set_ylabel("fastest round (ms)")
            info = shapes[scaling[0][1]]
            ax.set_title(f"{device}, {mode} (B={info['B']}, E={info['E']}, H={info['H']})")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return f"wrote {out}"


def timer_note(data) -> str:
    timers = {b.get("options", {}).get("timer", "?") for b in data["benchmarks"]}
    if timers == {"process_time"}:
        return ("`time.process_time` (CPU time). The machine was shared with other work: wall-clock "
                "timings with several threads there measure the OS scheduler (threads waiting for each "
                "other) more than the code, so this run used one thread and CPU time, which equals "
                "wall-clock time for a single thread on an idle machine. The ratio-of-medians column still "
                "moves with the load between tests; the paired ratio cancels it")
    return ", ".join("`time.perf_counter` (wall clock)" if t == "perf_counter" else f"`{t}`" for t in sorted(timers))


def report(data, json_path: Path, plot_name: str) -> tuple[str, list[str]]:
    table, shapes = collect(data)
    meta = data.get("attnspec", {})
    machine = data.get("machine_info", {})
    reasons = not_timed_reasons(data)
    devices = [d for d in ("cpu", "cuda") if any(k[0] == d for k in table)]
    when = data.get("datetime", dt.datetime.now(dt.timezone.utc).isoformat())[:19].replace("T", " ")
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor") or "unknown CPU"
    md = ["# Benchmarks", "",
          f"Generated by `tools/bench_report.py` from `{json_path.name}`, measured {when} UTC.", "",
          f"* torch {meta.get('torch', machine.get('torch', '?'))}, "
          f"Python {meta.get('python', machine.get('python_version', '?'))}",
          f"* CPU: {cpu}; torch threads: {meta.get('torch_num_threads', machine.get('torch_num_threads', '?'))}",
          f"* CUDA: {machine.get('cuda_device', 'not available (the CUDA cases were skipped)')}",
          f"* timer: {timer_note(data)}",
          "* times are medians of pytest-benchmark rounds; **ratio** = median / median of "
          f"`{BASELINE}` on the same shape and pass (below 1 is faster); **paired** = median over rounds "
          "of time / baseline time with the two run alternately in the same test, which cancels load that "
          "changes between tests: the verdicts use it",
          "* implementations are called with `need_weights=False`; forward = eval + `torch.no_grad()`, "
          "where `nn.MultiheadAttention` takes its fused fast path on self-attention shapes (marked per row); "
          "forward+backward = train mode, dropout 0, inputs requiring grad (always torch's slow path)", "",
          "## Command", "",
          # tests/test_docs.py runs this block, on two cases, with tiny benchmark times
          "<!-- docs-test {\"append\": \"-k 'cpu-seq-64-forward-sdpa or cpu-seq-64-forward-torch'\"} -->", "```bash",
          meta.get("command", "python -m pytest tests/bench -n 0 --benchmark-only ..."),
          f"python tools/bench_report.py {json_path}", "```", "",
          "On an idle machine, drop `OMP_NUM_THREADS=1` and `--benchmark-timer=time.process_time` to time "
          "wall clock with all threads (the command in `tests/bench/test_bench.py`).", "",
          "## Shapes", "", *shape_table(shapes), ""]
    printed = []
    for device in devices:
        impls = implementations(table, device)
        md += [f"## {device.upper()}: paired ratio to `{BASELINE}` (forward / forward+backward)", "",
               *ratio_summary(table, shapes, device, impls, reasons), "",
               *verdicts(table, shapes, device, impls), "",
               f"## {device.upper()}: median times, grouped by shape", "",
               *timing_table(table, shapes, device, impls), ""]
        printed += [f"{device.upper()}", *timing_table(table, shapes, device, impls), ""]
    whole = sorted({(e["impl"], e["reason"]) for e in meta.get("not_timed", []) if e.get("shape") is None})
    claims = defaultdict(list)  # (impl, reason) -> shapes, in run order
    for e in meta.get("not_timed", []):
        if e.get("shape") is not None and e["shape"] not in claims[e["impl"], e["reason"]]:
            claims[e["impl"], e["reason"]].append(e["shape"])
    if whole or claims:
        md += ["## Not timed", ""]
        md += [f"* **{impl}**: {reason}" for impl, reason in whole]
        md += [f"* {impl}, {', '.join(where)}: {reason}" for (impl, reason), where in claims.items()]
        md += [""]
    md += ["## Scaling", "",
           "Time against sequence length (L = S), log-log, one line per implementation. Each point is "
           "the fastest round of its case, the statistic least disturbed by other work on the machine.", "",
           f"![time against sequence length, log-log]({plot_name})", ""]
    return "\n".join(md), printed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON (from --benchmark-json)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent.parent / "docs",
                        help="where benchmarks.md and scaling.png go. Default: %(default)s")
    args = parser.parse_args(argv)
    data = load(args.json)
    markdown, printed = report(data, args.json, "scaling.png")
    print("\n".join(printed))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "benchmarks.md").write_text(markdown)
    print(f"wrote {args.out_dir / 'benchmarks.md'}")
    table, shapes = collect(data)
    devices = [d for d in ("cpu", "cuda") if any(k[0] == d for k in table)]
    print(plot(table, shapes, devices, args.out_dir / "scaling.png"))


if __name__ == "__main__":
    main()
