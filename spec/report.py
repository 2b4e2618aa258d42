"""Results for people and tools: repro snippets, the conformance matrix, JSON and Markdown reports.

The terminal matrix, the JSON report and the Markdown report are rendered from
the same list of :class:`Record` (one per implementation x law x device x dtype).
"""
from __future__ import annotations

import dataclasses
import html
import json
import platform
import textwrap
from collections import defaultdict
from dataclasses import dataclass

from . import __version__
from .repro import adapter_origin, repro_snippet  # noqa: F401  (re-exported: the report's names)
from .vocabulary import FAILING, NO_CUDA, SEVERITIES

FAMILY_HEADERS = {"shape": "shp", "equivalence": "eqv", "masking": "mask", "permutation": "perm",
                  "head-split": "head", "numerics": "num", "dropout": "drop", "paths": "path",
                  "hygiene": "hyg", "bad-input": "bad"}
NAME_WIDTH = 26


@dataclass
class Record:
    impl: str
    law: str
    family: str
    device: str
    status: str  # one of attnspec.runner.STATUSES
    seconds: float = 0.0
    ratio: float | None = None
    origin: str = ""
    problem: str = ""
    repro: str = ""
    reason: str = ""
    dtype: str = ""  # "" where the dtype was drawn per problem (certify without dtype=)
    severity: str = ""  # the law's: results, edge or validation (attnspec.checks.SEVERITIES)
    examples: int = 0  # examples run
    compared: int = 0  # examples that compared something that could have failed
    deviations: list = dataclasses.field(default_factory=list)  # declared for this law: text, reason, observed


NOTED = (*FAILING, "deviation")  # statuses listed under the matrix, with their reason
VERDICTS = (("FAIL", ("fail", "error")), ("CRASHED", ("crashed",)), ("HUNG", ("hung", "not run")),
            ("INCONCL", ("inconclusive",)), ("PASS*", ("deviation",)))  # the first that applies, else PASS
LEGEND = ("PASS*: passes but for the recorded deviations listed below. CRASHED: some law killed the process "
          "running it (a signal, an abort, a CUDA error, out of memory). HUNG: some example outlived its time "
          "limit (then later laws get a short limit, and after a few hangs are not run). INCONCL: no failure, "
          "but some law compared too few examples to pass.")
DTYPE_SHORT = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def _row_order(key):
    """Rows sorted by implementation, then device (cpu first), then dtype from the most precise."""
    impl, device, dtype = key
    order = list(DTYPE_SHORT)
    return (impl, device != "cpu", device, order.index(dtype) if dtype in order else len(order), dtype)


def _rows(records):
    """{(impl, device, dtype): {family: [records]}} for the device/dtype pairs that ran at all."""
    rows = defaultdict(lambda: defaultdict(list))
    for r in records:
        rows[(r.impl, r.device, r.dtype)][r.family].append(r)
    return {key: fams for key, fams in rows.items()
            if any(r.status not in ("skipped", "not claimed") for rs in fams.values() for r in rs)}


def _unclaimed(records) -> list[str]:
    """Labels of the (impl, device, dtype) rows where no law is claimed at all."""
    seen = defaultdict(set)
    for r in records:
        seen[(r.impl, r.device, r.dtype)].add(r.status)
    return [row_label(*key) for key, statuses in seen.items() if statuses == {"not claimed"}]


def row_label(impl: str, device: str, dtype: str) -> str:
    """``sdpa bf16``, ``sdpa cuda f16``: the implementation, then the device unless cpu, then the dtype."""
    parts = [impl] + ([device] if device != "cpu" else []) + ([DTYPE_SHORT.get(dtype, dtype)] if dtype else [])
    return " ".join(parts)


def verdict(records) -> str:
    statuses = {r.status for r in records}
    return next((name for name, which in VERDICTS if statuses & set(which)), "PASS")


def _cell(records) -> str:
    claimed = [r for r in records if r.status not in ("not claimed", "skipped")]
    if not claimed:
        return "-"
    return f"{sum(r.status == 'pass' for r in claimed)}/{len(claimed)}"


def summary(records) -> dict:
    counts = defaultdict(int)
    for r in records:
        counts[r.status] += 1
    return dict(counts)


SEVERITY_ORDER = ("results", "edge", "validation", "")


def _detail(r) -> str:
    """The line of a failure that says what is wrong (the second; the first restates the law)."""
    lines = [line.strip() for line in (r.reason or "").strip().splitlines()]
    return lines[1] if len(lines) > 1 and " breaks " in lines[0] else (lines[0] if lines else "")


def render_findings(records) -> str:
    """One line per failing law of each implementation, most severe first, its dtypes folded together."""
    found = defaultdict(list)
    for r in records:
        if r.status in FAILING:
            found[(SEVERITY_ORDER.index(r.severity) if r.severity in SEVERITY_ORDER else 9, r.impl, r.law)].append(r)
    lines, heading = [], None
    for (rank, impl, law), rs in sorted(found.items()):
        severity = rs[0].severity
        if severity != heading:
            heading = severity
            lines.append(f"{SEVERITIES.get(severity, 'other')}:")
        where = ", ".join(row_label("", r.device, r.dtype).strip() or "-" for r in rs)
        status = "/".join(sorted({r.status.upper() for r in rs}))
        lines.extend(textwrap.wrap(f"{status} {impl}: {law} ({where}): {_detail(rs[0])}", 100,
                                   initial_indent="  ", subsequent_indent="      ", max_lines=2))
    return "\n".join(lines)


def render_matrix(records) -> str:
    """Implementation x family: laws passed / laws claimed; fits 80 columns."""
    rows = _rows(records)
    widths = {f: max([len(h)] + [len(_cell(fams.get(f, []))) for fams in rows.values()]) + 1
              for f, h in FAMILY_HEADERS.items()}
    head = "implementation".ljust(NAME_WIDTH) + "".join(h.rjust(widths[f]) for f, h in FAMILY_HEADERS.items())
    lines = [head + " result"]
    problems = []
    for (impl, device, dtype), fams in sorted(rows.items(), key=lambda kv: _row_order(kv[0])):
        suffix = row_label("", device, dtype)
        room = NAME_WIDTH - len(suffix)
        label = (impl if len(impl) <= room else "~" + impl[len(impl) - room + 1:]) + suffix  # keep the class name
        cells = "".join(_cell(fams.get(f, [])).rjust(widths[f]) for f in FAMILY_HEADERS)
        everything = [r for rs in fams.values() for r in rs]
        lines.append(label.ljust(NAME_WIDTH) + cells + " " + verdict(everything))
        for r in sorted(everything, key=lambda r: SEVERITY_ORDER.index(r.severity) if r.severity in SEVERITY_ORDER
                        else 9):
            if r.status in NOTED:
                first = (r.reason or "").strip().splitlines()[0] if r.reason else ""
                problems.extend(textwrap.wrap(f"{r.status.upper()[:9]:9s} {label}: {r.law} ({r.family})", 80,
                                              initial_indent="  ", subsequent_indent=" " * 12))
                problems.extend(textwrap.wrap(first, 80, initial_indent=" " * 12, subsequent_indent=" " * 12,
                                              max_lines=3))
    # no CUDA: one line per device; anything else (a kernel this machine lacks): one per implementation
    skipped = sorted({(r.device if r.reason == NO_CUDA else r.impl, r.reason) for r in records if r.status == "skipped"})
    total = summary(r for r in records if r.status != "skipped")
    lines.append("cells: laws passed / laws claimed ('-': none claimed). shp=shape,")
    lines.append("eqv=equivalence, head=head-split, num=numerics, path=paths, hyg=hygiene,")
    lines.append("bad=bad-input.")
    lines.extend(textwrap.wrap(LEGEND, 80))
    lines.append("totals: " + ", ".join(f"{n} {s}" for s, n in sorted(total.items())))
    for device, reason in skipped:
        lines.append(f"{device}: skipped ({reason})")
    unclaimed = _unclaimed(records)
    if unclaimed:
        lines.extend(textwrap.wrap("nothing claimed: " + ", ".join(unclaimed), 80))
    if problems:
        lines.append("")
        lines.extend(problems)
    return "\n".join(lines)


def render_statistics(records) -> str:
    """One line per law run (``--hypothesis-show-statistics``): examples run, how many compared, time, status."""
    ran = sorted((r for r in records if r.status not in ("skipped", "not claimed")),
                 key=lambda r: (r.impl, r.device, _row_order((r.impl, r.device, r.dtype))[3], r.law))
    lines = [f"{row_label(r.impl, r.device, r.dtype)} {r.law}: {r.examples} examples, {r.compared} compared, "
             f"{r.seconds:.2f} s ({r.status})" for r in ran]
    lines.append(f"total: {sum(r.examples for r in ran)} examples in {sum(r.seconds for r in ran):.1f} s of law time")
    return "\n".join(lines)


def environment() -> dict:
    import hypothesis
    import torch

    return {
        "attnspec": __version__, "torch": torch.__version__, "hypothesis": hypothesis.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "tf32": False, "threads": torch.get_num_threads(),
        "hypothesis_profile": hypothesis.settings.get_current_profile_name()
        if hasattr(hypothesis.settings, "get_current_profile_name") else None,
    }


def impl_info(adapter) -> dict:
    """What the report says of an implementation: how to load it, and its capabilities (JSON-ready)."""
    caps = dataclasses.asdict(adapter.capabilities)
    caps["dtypes"] = [str(d).replace("torch.", "") for d in adapter.capabilities.dtypes]
    caps["deviations"] = [dataclasses.asdict(d) for d in adapter.capabilities.deviations]
    return {"origin": adapter_origin(adapter), "capabilities": json.loads(json.dumps(caps, default=str))}


def to_json(records, impls: dict) -> dict:
    """The report as a JSON-ready dict: environment, then per implementation, device, dtype and law.
    ``impls``: {name: adapter, or its :func:`impl_info`}."""
    out = {"environment": environment(), "summary": summary(records), "implementations": {}}
    for r in records:
        info = impls.get(r.impl)
        info = impl_info(info) if info is not None and hasattr(info, "capabilities") else (info or {})
        entry = out["implementations"].setdefault(r.impl, {
            "origin": r.origin or info.get("origin", r.impl), "capabilities": info.get("capabilities"),
            "verdict": None, "results": {}})
        fields = {k: v for k, v in dataclasses.asdict(r).items()
                  if k not in ("impl", "law", "device", "dtype", "origin")}
        entry["results"].setdefault(r.device, {}).setdefault(r.dtype or "drawn", {})[r.law] = fields
    for name, entry in out["implementations"].items():
        mine = [r for r in records if r.impl == name and r.status != "skipped"]
        entry["verdict"] = verdict(mine) if mine else "NOT RUN"
    return out


def to_markdown(records) -> str:
    rows = _rows(records)
    env = environment()
    lines = ["# attnspec conformance report", "",
             f"attnspec {env['attnspec']} · torch {env['torch']} · hypothesis {env['hypothesis']} · "
             f"python {env['python']} · TF32 off", "",
             "| implementation | " + " | ".join(FAMILY_HEADERS.values()) + " | verdict |",
             "|---|" + "---|" * (len(FAMILY_HEADERS) + 1)]
    for (impl, device, dtype), fams in sorted(rows.items(), key=lambda kv: _row_order(kv[0])):
        everything = [r for rs in fams.values() for r in rs]
        label = row_label(impl, device, dtype)
        lines.append(f"| `{label}` | " + " | ".join(_cell(fams.get(f, [])) for f in FAMILY_HEADERS)
                     + f" | {verdict(everything)} |")
    lines += ["", "Cells: laws passed / laws claimed ('-': none claimed). " + LEGEND, ""]
    for r in records:
        if r.status in NOTED:
            where = ", ".join(x for x in (r.family, r.device, r.dtype) if x)
            lines += [f"### {r.status}: `{r.impl}` · {r.law} ({where})", "",
                      f"{r.compared} of {r.examples} examples compared something that could fail.", "",
                      "```", (r.reason or "").strip(), "```", ""]
    declared = [(r, d) for r in records for d in r.deviations]
    if declared:
        lines += ["## Declared deviations", ""]
        for r, d in declared:
            seen = f"confirmed by {d['observed']} examples" if d["observed"] else "not observed in this run"
            lines.append(f"- `{r.impl}` {r.device} {r.dtype}: {d['deviation']}: {seen}. {d['reason']}")
        lines.append("")
    return "\n".join(lines)


STATUS_COLOURS = {"pass": "#c8e6c9", "fail": "#ffcdd2", "error": "#ffcdd2", "crashed": "#e1bee7", "hung": "#d1c4e9",
                  "not run": "#d1c4e9", "inconclusive": "#ffe0b2", "deviation": "#fff9c4", "not claimed": "#eeeeee",
                  "skipped": "#eeeeee"}


def to_html(records) -> str:
    """One self-contained page: the matrix coloured by status, then each finding with its message and repro."""
    esc = html.escape
    env = environment()
    rows = _rows(records)
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>attnspec conformance report</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #999;padding:3px 8px;text-align:center}td.name{text-align:left}"
           "pre{background:#f6f6f6;padding:8px;overflow-x:auto}"
           + "".join(f".s-{s.replace(' ', '-')}{{background:{c}}}" for s, c in STATUS_COLOURS.items()) + "</style>",
           "</head><body><h1>attnspec conformance report</h1>",
           f"<p>attnspec {esc(env['attnspec'])} · torch {esc(env['torch'])} · hypothesis {esc(env['hypothesis'])} · "
           f"python {esc(env['python'])} · TF32 off</p>",
           "<table><tr><th>implementation</th>" + "".join(f"<th>{esc(h)}</th>" for h in FAMILY_HEADERS.values())
           + "<th>verdict</th></tr>"]
    for (impl, device, dtype), fams in sorted(rows.items(), key=lambda kv: _row_order(kv[0])):
        everything = [r for rs in fams.values() for r in rs]
        cells = []
        for family in FAMILY_HEADERS:
            rs = [r for r in fams.get(family, []) if r.status not in ("not claimed", "skipped")]
            worst = next((s for s in (*FAILING, "deviation", "pass") if any(r.status == s for r in rs)), "not claimed")
            cells.append(f"<td class='s-{worst.replace(' ', '-')}'>{esc(_cell(fams.get(family, [])))}</td>")
        v = verdict(everything)
        colour = {"FAIL": "fail", "CRASHED": "crashed", "HUNG": "hung", "INCONCL": "inconclusive",
                  "PASS*": "deviation"}.get(v, "pass")
        out.append(f"<tr><td class='name'>{esc(row_label(impl, device, dtype))}</td>{''.join(cells)}"
                   f"<td class='s-{colour}'>{esc(v)}</td></tr>")
    out.append("</table>")
    for r in sorted((r for r in records if r.status in NOTED), key=lambda r: (SEVERITY_ORDER.index(r.severity)
                    if r.severity in SEVERITY_ORDER else 9, r.impl, r.law)):
        out += [f"<h3 class='finding s-{r.status.replace(' ', '-')}'>{esc(r.status)}: {esc(r.impl)} · {esc(r.law)} "
                f"({esc(', '.join(x for x in (r.severity, r.device, r.dtype) if x))})</h3>",
                f"<p>{r.compared} of {r.examples} examples compared something that could fail.</p>",
                f"<pre class='message'>{esc((r.reason or '').split(chr(10) + '  reproduce:')[0].strip())}</pre>"]
        if r.repro:
            out.append(f"<p>Reproduce:</p><pre class='repro'>{esc(r.repro)}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def write_reports(records, impls: dict, *, json_path=None, markdown_path=None, html_path=None,
                  extend=None) -> None:
    """Write the reports asked for; ``extend(report)`` may add to the JSON report first (a plugin hook)."""
    if json_path:
        report = to_json(records, impls)
        if extend is not None:
            extend(report)
        with open(json_path, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
    if html_path:
        with open(html_path, "w") as fh:
            fh.write(to_html(records))
    if markdown_path:
        with open(markdown_path, "w") as fh:
            fh.write(to_markdown(records))
