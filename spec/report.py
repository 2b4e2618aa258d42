"""Results for people and tools: one matrix model (:class:`Matrix`), rendered for the terminal, JSON,
Markdown and HTML.

Every renderer reads the same :class:`~attnspec.verdict.Verdict` records through :class:`Matrix`:
rows of (implementation, device, dtype), a column per law family (:data:`attnspec.vocabulary.FAMILY_LIST`),
the failing laws most severe first, the deviations confirmed, the totals. The terminal shows each
failure's message once, in pytest's failure section; the matrix after it names the failing laws only.
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
from .repro import adapter_origin
from .verdict import SCHEMA_VERSION, Verdict
from .vocabulary import FAILING, FAMILY_LIST, NO_CUDA, SEVERITIES

DTYPE_SHORT = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}
SEVERITY_ORDER = ("results", "edge", "validation")
# The row's result: the first that applies, else PASS; and what each means, shown where it occurs.
RESULTS = (("FAIL", ("fail", "error")), ("CRASHED", ("crashed",)), ("HUNG", ("hung", "not run")),
           ("INCONCL", ("inconclusive",)), ("PASS*", ("deviation",)))
MEANINGS = {"PASS*": "passes but for the recorded deviations listed below",
            "CRASHED": "some law killed the process running it (a signal, an abort, a CUDA error, out of memory)",
            "HUNG": "some example outlived its time limit (later laws then get a short limit; after a few hangs, "
                    "none runs)",
            "INCONCL": "no failure, but some law compared too few examples to pass",
            "FAIL": "some law fails; its message is in pytest's failure section above"}
STATUS_COLOURS = {"pass": "#c8e6c9", "fail": "#ffcdd2", "error": "#ffcdd2", "crashed": "#e1bee7", "hung": "#d1c4e9",
                  "not run": "#d1c4e9", "inconclusive": "#ffe0b2", "deviation": "#fff9c4", "not claimed": "#eeeeee",
                  "skipped": "#eeeeee"}


def row_label(impl: str, device: str, dtype: str) -> str:
    """``sdpa bf16``, ``sdpa cuda f16``: the implementation, then the device unless cpu, then the dtype."""
    parts = [impl] + ([device] if device != "cpu" else []) + ([DTYPE_SHORT.get(dtype, dtype)] if dtype else [])
    return " ".join(p for p in parts if p)


def result_of(verdicts) -> str:
    statuses = {v.status for v in verdicts}
    return next((name for name, which in RESULTS if statuses & set(which)), "PASS")


def _rank(v: Verdict):
    """Most severe first; within a severity, laws that name a feature (grouped heads, ALiBi, ...) before general
    ones, since they say where the bug is, then laws that require more."""
    severity = SEVERITY_ORDER.index(v.severity) if v.severity in SEVERITY_ORDER else len(SEVERITY_ORDER)
    return severity, -len(v.features), -len(v.requires), v.impl, v.law


@dataclass(frozen=True)
class Cell:
    passed: int
    claimed: int
    worst: str  # the worst status among its claimed verdicts, or "not claimed"

    def text(self) -> str:
        return f"{self.passed}/{self.claimed}" if self.claimed else "-"


@dataclass(frozen=True)
class Row:
    impl: str
    device: str
    dtype: str
    cells: dict  # family -> Cell
    result: str

    @property
    def label(self) -> str:
        return row_label(self.impl, self.device, self.dtype)


@dataclass(frozen=True)
class Matrix:
    """The results of a run: rows, findings, deviations, totals (see the module docstring)."""

    rows: tuple
    findings: tuple  # failing verdicts, most severe first
    deviations: tuple  # verdicts with status "deviation"
    declared: tuple  # (verdict, declared deviation dict) for every deviation any law declares
    totals: dict
    skipped: tuple  # (who, reason): a device without CUDA, an implementation that cannot load here
    unclaimed: tuple  # labels of rows where nothing is claimed

    @classmethod
    def of(cls, verdicts) -> "Matrix":
        verdicts = list(verdicts)
        grouped = defaultdict(list)
        for v in verdicts:
            grouped[(v.impl, v.device, v.dtype)].append(v)
        rows, unclaimed = [], []
        for (impl, device, dtype), vs in sorted(grouped.items(), key=lambda kv: _row_order(*kv[0])):
            ran = [v for v in vs if v.status not in ("skipped", "not claimed")]
            if not ran:
                if any(v.status == "not claimed" for v in vs):
                    unclaimed.append(row_label(impl, device, dtype))
                continue
            cells = {}
            for family in FAMILY_LIST:
                mine = [v for v in ran if v.family == family.name]
                worst = next((s for s in (*FAILING, "deviation", "pass") if any(v.status == s for v in mine)),
                             "not claimed")
                cells[family.name] = Cell(sum(v.status == "pass" for v in mine), len(mine), worst)
            rows.append(Row(impl, device, dtype, cells, result_of(ran)))
        counts = defaultdict(int)
        for v in verdicts:
            if v.status != "skipped":
                counts[v.status] += 1
        skipped = sorted({(v.device if v.detail == NO_CUDA else v.impl, v.detail) for v in verdicts
                          if v.status == "skipped"})
        return cls(tuple(rows), tuple(sorted((v for v in verdicts if v.failing), key=_rank)),
                   tuple(v for v in verdicts if v.status == "deviation"),
                   tuple((v, d) for v in verdicts for d in v.deviations), dict(sorted(counts.items())),
                   tuple(skipped), tuple(unclaimed))

    # -- renderers --------------------------------------------------------------------------------
    def terminal(self) -> str:
        """The matrix (implementation names never cut), the failing laws most severe first, the deviations."""
        width = max([len("implementation")] + [len(r.label) for r in self.rows])
        cols = {f.name: max([len(f.header)] + [len(r.cells[f.name].text()) for r in self.rows]) + 1
                for f in FAMILY_LIST}
        lines = ["implementation".ljust(width) + "".join(f.header.rjust(cols[f.name]) for f in FAMILY_LIST)
                 + " result"]
        for r in self.rows:
            lines.append(r.label.ljust(width) + "".join(r.cells[f.name].text().rjust(cols[f.name])
                                                        for f in FAMILY_LIST) + " " + r.result)
        headers = " ".join(f"{f.header}={f.name}" for f in FAMILY_LIST)
        lines += textwrap.wrap(f"cells: laws passed / laws claimed ('-': none claimed); {headers}.", 100)
        results = {r.result for r in self.rows} - {"PASS"}
        lines += textwrap.wrap("; ".join(f"{name}: {MEANINGS[name]}" for name, _ in RESULTS if name in results), 100)
        lines.append("totals: " + ", ".join(f"{n} {s}" for s, n in self.totals.items()))
        lines += [f"{who}: skipped ({reason})" for who, reason in self.skipped]
        if self.unclaimed:
            lines += textwrap.wrap("nothing claimed: " + ", ".join(self.unclaimed), 100)
        lines += self._findings()
        if self.deviations:
            lines.append("deviations confirmed (declared, with their reasons, in the JSON and Markdown reports):")
            for v in self.deviations:
                lines.append(f"  PASS* {row_label(v.impl, v.device, v.dtype)}: {v.law}")
        return "\n".join(lines)

    def _findings(self) -> list:
        """One line per failing law of each implementation, its dtypes folded together, most severe first."""
        folded = {}
        for v in self.findings:
            folded.setdefault((v.severity, v.impl, v.law), []).append(v)
        lines, heading = [], None
        for (severity, impl, law), vs in folded.items():
            if heading is None:
                lines.append("failing laws, most severe first (each message is above):")
            if severity != heading:
                heading = severity
                lines.append(f"  {SEVERITIES.get(severity, severity)}:")
            where = ", ".join(row_label("", v.device, v.dtype) or "-" for v in vs)
            status = "/".join(sorted({v.status.upper() for v in vs}))
            lines.append(f"    {status} {impl}: {law} ({where})")
        return lines

    def to_json(self, verdicts, impls: dict) -> dict:
        """The report as a JSON-ready dict: its schema version, the environment, the totals, and per
        implementation its origin, capabilities, result and every verdict by device, dtype and law."""
        out = {"schema_version": SCHEMA_VERSION, "environment": environment(), "summary": self.totals,
               "implementations": {}}
        for v in verdicts:
            info = impls.get(v.impl)
            info = impl_info(info) if info is not None and hasattr(info, "capabilities") else (info or {})
            entry = out["implementations"].setdefault(v.impl, {
                "origin": v.origin or info.get("origin", v.impl), "capabilities": info.get("capabilities"),
                "result": None, "verdicts": {}})
            fields = {k: val for k, val in v.to_dict().items() if k not in ("impl", "device", "dtype", "law")}
            entry["verdicts"].setdefault(v.device, {}).setdefault(v.dtype or "drawn", {})[v.law] = fields
        for name, entry in out["implementations"].items():
            mine = [v for v in verdicts if v.impl == name and v.status not in ("skipped", "not claimed")]
            entry["result"] = result_of(mine) if mine else "NOT RUN"
        return out

    def markdown(self) -> str:
        env = environment()
        lines = ["# attnspec conformance report", "",
                 f"attnspec {env['attnspec']} · torch {env['torch']} · hypothesis {env['hypothesis']} · "
                 f"python {env['python']} · TF32 off", "",
                 "| implementation | " + " | ".join(f.header for f in FAMILY_LIST) + " | result |",
                 "|---|" + "---|" * (len(FAMILY_LIST) + 1)]
        for r in self.rows:
            lines.append(f"| `{r.label}` | " + " | ".join(r.cells[f.name].text() for f in FAMILY_LIST)
                         + f" | {r.result} |")
        lines += ["", "Cells: laws passed / laws claimed ('-': none claimed). "
                  + " ".join(f"{f.header} = {f.name}." for f in FAMILY_LIST), ""]
        for v in (*self.findings, *self.deviations):
            lines += [f"### {v.status}: `{row_label(v.impl, v.device, v.dtype)}` · {v.law} ({v.family})", "",
                      f"{v.compared} of {v.examples} examples compared something that could fail.", "",
                      "```", v.message, "```", ""]
        if self.declared:
            lines += ["## Declared deviations", ""]
            for v, d in self.declared:
                seen = f"confirmed by {d['observed']} examples" if d["observed"] else "not observed in this run"
                lines.append(f"- `{row_label(v.impl, v.device, v.dtype)}`: {d['deviation']}: {seen}. {d['reason']}")
            lines.append("")
        return "\n".join(lines)

    def html(self) -> str:
        """One self-contained page: the matrix coloured by status, then each finding with its message and repro."""
        esc, env = html.escape, environment()
        colours = "".join(f".s-{s.replace(' ', '-')}{{background:{c}}}" for s, c in STATUS_COLOURS.items())
        out = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>attnspec conformance report</title>",
               "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
               "td,th{border:1px solid #999;padding:3px 8px;text-align:center}td.name{text-align:left}"
               f"pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}{colours}</style>",
               "</head><body><h1>attnspec conformance report</h1>",
               f"<p>attnspec {esc(env['attnspec'])} · torch {esc(env['torch'])} · hypothesis {esc(env['hypothesis'])}"
               f" · python {esc(env['python'])} · TF32 off</p>",
               "<table><tr><th>implementation</th>" + "".join(f"<th title='{esc(f.name)}'>{esc(f.header)}</th>"
                                                              for f in FAMILY_LIST) + "<th>result</th></tr>"]
        result_status = {name: which[0] for name, which in RESULTS} | {"PASS": "pass"}
        for r in self.rows:
            cells = "".join(f"<td class='s-{r.cells[f.name].worst.replace(' ', '-')}'>{esc(r.cells[f.name].text())}"
                            "</td>" for f in FAMILY_LIST)
            out.append(f"<tr><td class='name'>{esc(r.label)}</td>{cells}"
                       f"<td class='s-{result_status[r.result]}'>{esc(r.result)}</td></tr>")
        out.append("</table>")
        for v in (*self.findings, *self.deviations):
            message = v.message.split("\n  reproduce:")[0]
            out += [f"<h3 class='finding s-{v.status.replace(' ', '-')}'>{esc(v.status)}: "
                    f"{esc(row_label(v.impl, v.device, v.dtype))} · {esc(v.law)} ({esc(v.severity)})</h3>",
                    f"<p>{v.compared} of {v.examples} examples compared something that could fail.</p>",
                    f"<pre class='message'>{esc(message)}</pre>"]
            if v.repro:
                out.append(f"<p>Reproduce:</p><pre class='repro'>{esc(v.repro)}</pre>")
        out.append("</body></html>")
        return "\n".join(out)


def _row_order(impl: str, device: str, dtype: str):
    """Rows by implementation, then device (cpu first), then dtype from the most precise."""
    order = list(DTYPE_SHORT)
    return impl, device != "cpu", device, order.index(dtype) if dtype in order else len(order), dtype


def render_statistics(verdicts) -> str:
    """One line per law run (``--hypothesis-show-statistics``): examples run, how many compared, time, status."""
    ran = sorted((v for v in verdicts if v.status not in ("skipped", "not claimed")),
                 key=lambda v: (*_row_order(v.impl, v.device, v.dtype), v.law))
    lines = [f"{row_label(v.impl, v.device, v.dtype)} {v.law}: {v.examples} examples, {v.compared} compared, "
             f"{v.seconds:.2f} s ({v.status})" for v in ran]
    lines.append(f"total: {sum(v.examples for v in ran)} examples in {sum(v.seconds for v in ran):.1f} s of law time")
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


def write_reports(verdicts, impls: dict, *, json_path=None, markdown_path=None, html_path=None,
                  extend=None) -> None:
    """Write the reports asked for; ``extend(report)`` may add to the JSON report first (a plugin hook)."""
    verdicts = list(verdicts)
    matrix = Matrix.of(verdicts)
    if json_path:
        report = matrix.to_json(verdicts, impls)
        if extend is not None:
            extend(report)
        with open(json_path, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
    if html_path:
        with open(html_path, "w") as fh:
            fh.write(matrix.html())
    if markdown_path:
        with open(markdown_path, "w") as fh:
            fh.write(matrix.markdown())
