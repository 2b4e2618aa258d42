"""The kill matrix: every law on every mutant and equivalent, beside two baseline batteries.

    python -m tests.zoo.kill_matrix [--seeds N] [--jobs J] [--out docs/kill_matrix.md] [--zoo features|decoding|kernels|varlen]

Under the first seed every law runs on every mutant (no stopping at the first
failure), which gives the mutant x family matrix and the unique kills of each
family. Under each further seed the mutants run until their first failing law
(that is all "killed" needs), one dtype at a time as pytest runs them (float64, float32,
bfloat16), and the correct implementations run every law, each problem drawing its dtype
(a failure, an error or an inconclusive law there is a false alarm). The two baselines of
:mod:`tests.zoo.baselines` run once: they draw nothing at random.

``--zoo features`` runs the zoo of :mod:`tests.zoo.features` instead (the causal flag, grouped-query
heads, sliding windows: mutants of ``attnspec.impls.modern_attention.ModernAttention``), with the
baselines rewritten for that module's API; its default output is ``docs/kill_matrix_features.md``.
``--zoo kernels`` runs :mod:`tests.zoo.kernels` (mutants of the tiled FlashAttention-style kernel, certified
through the kernel contract) against a shape-only test and FlashAttention 2's grid; output
``docs/kill_matrix_kernels.md``.
``--zoo decoding`` runs :mod:`tests.zoo.decoding` (RoPE and a key/value cache), output
``docs/kill_matrix_decoding.md``.
``--zoo varlen`` runs :mod:`tests.zoo.varlen` (mutants of the bundled varlen + paged + cache-step kernel, each
through its bug's entry point) against a shape-only test and FlashAttention 2's varlen and kvcache grids; output
``docs/kill_matrix_varlen.md``.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import os
import platform
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import hypothesis
import torch

from attnspec import DropIn
from attnspec.checks import FAMILIES, LAWS
from attnspec.runner import certify
from attnspec.requirements import DEVICE_DTYPES

from . import decoding, features, kernels, varlen
from . import mutants as zoo
from .base import ZooMHA
from .baselines import BASELINES, DECODING_BASELINES, FEATURE_BASELINES, KERNEL_BASELINES, VARLEN_BASELINES

KILLED = ("fail",)  # "error" means the suite itself broke: reported, never counted as a kill
CORRECT = [("ZooMHA", ZooMHA)] + zoo.EQUIVALENTS
FAMILY_SHORT = {"shape": "shape", "equivalence": "equiv", "masking": "mask", "permutation": "perm",
                "head-split": "heads", "numerics": "num", "dropout": "drop", "paths": "paths",
                "hygiene": "hyg", "bad-input": "bad"}


FEATURE_NAMES = {n for n, _ in features.FEATURE_MUTANTS + features.FEATURE_CORRECT}
DECODING_NAMES = {n for n, _ in decoding.DECODING_MUTANTS + decoding.DECODING_CORRECT}
KERNEL_NAMES = {n for n, _ in kernels.KERNEL_MUTANTS + kernels.KERNEL_CORRECT}
VARLEN_NAMES = {n for n, _ in varlen.VARLEN_MUTANTS + varlen.VARLEN_CORRECT}


def _class(name: str):
    if name in VARLEN_NAMES:
        return dict(varlen.VARLEN_MUTANTS + varlen.VARLEN_CORRECT)[name]
    if name in KERNEL_NAMES:
        return dict(kernels.KERNEL_MUTANTS + kernels.KERNEL_CORRECT)[name]
    return dict(CORRECT + zoo.MUTANTS + features.FEATURE_MUTANTS + features.FEATURE_CORRECT
                + decoding.DECODING_MUTANTS + decoding.DECODING_CORRECT)[name]


def _adapter(name: str):
    """A drop-in for the nn.MultiheadAttention zoo; ModernAttention's adapter (its declared alignment) for features."""
    if name in FEATURE_NAMES:
        return features.feature_adapter(name, _class(name))
    if name in DECODING_NAMES:
        return decoding.decoding_adapter(name, _class(name))
    if name in KERNEL_NAMES:
        return kernels.kernel_adapter(name, _class(name))
    if name in VARLEN_NAMES:
        return varlen.varlen_adapter(name, _class(name))
    return DropIn(_class(name), name=name)


def _describe(name: str) -> str:
    if name in VARLEN_NAMES:
        obj = _class(name)
        return varlen.describe(obj) if name in dict(varlen.VARLEN_MUTANTS) else (
            "FlashInfer's CSR pages, a CPU stand-in behind the FlashInfer-style adapter" if isinstance(obj, str)
            else f"{(type(obj).__doc__ or 'the bundled kernel').strip()} ({obj.ENTRY})")
    return kernels.describe(_class(name)) if name in KERNEL_NAMES else zoo.describe(_class(name))


@dataclass
class Run:
    """One certification of one implementation under one seed."""

    name: str
    seed: int | None
    stop_first: bool
    results: list = field(default_factory=list)  # (law, family, status, seconds, first message line)
    wall: float = 0.0

    @property
    def failed(self) -> list:
        return [r for r in self.results if r[2] in KILLED]

    @property
    def errors(self) -> list:
        """Laws the suite could not decide: an error, or inconclusive (too few informative examples)."""
        return [r for r in self.results if r[2] in ("error", "inconclusive")]

    @property
    def killed(self) -> bool:
        return bool(self.failed)

    @property
    def families_killing(self) -> set:
        return {r[1] for r in self.failed}

    @property
    def first_failure(self):
        """(law, seconds until it failed, counting every law run before it), or None."""
        elapsed = 0.0
        for law, _family, status, seconds, _msg in self.results:
            elapsed += seconds
            if status in KILLED:
                return law, elapsed
        return None


def certify_one(name: str, seed: int | None, stop_first: bool) -> Run:
    """Run in a worker process: certify ``name`` (a mutant or a correct variant) under ``seed``."""
    warnings.simplefilter("ignore")
    kwargs = {"stop_at_first_failure": stop_first}
    if seed is not None and "seed" in inspect.signature(certify).parameters:
        kwargs["seed"] = seed
    start = time.perf_counter()
    adapter = _adapter(name)
    if stop_first:  # as pytest runs a law: once per dtype, float64 first; stop at the first failing law
        results = []
        for dtype in DEVICE_DTYPES["cpu"]:
            results += certify(adapter, dtype=dtype, **kwargs)
            if any(r.status in KILLED for r in results):
                break
    else:  # every law, each problem drawing its dtype (the full matrix, and the correct implementations)
        results = certify(adapter, **kwargs)
    wall = time.perf_counter() - start
    rows = [(r.law, r.family, r.status, r.seconds, (r.message.splitlines() or [""])[0][:200]) for r in results]
    return Run(name, seed, stop_first, rows, wall)


def run_baselines(name: str) -> dict:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if name in FEATURE_NAMES:
        return {battery: fn(_class(name), features.alignment_of(name)) for battery, fn in FEATURE_BASELINES.items()}
    if name in DECODING_NAMES:
        return {battery: fn(_class(name), decoding.rope_of(name)) for battery, fn in DECODING_BASELINES.items()}
    if name in KERNEL_NAMES:
        return {battery: fn(_class(name)) for battery, fn in KERNEL_BASELINES.items()}
    if name in VARLEN_NAMES:
        adapter = _adapter(name)
        caps = adapter.capabilities
        fn = adapter.attend_varlen if caps.entry == "varlen" else adapter.attend_cache
        return {battery: check(fn, caps.entry, caps) for battery, check in VARLEN_BASELINES.items()}
    return {battery: fn(_class(name)) for battery, fn in BASELINES.items()}


# ------------------------------------------------------------------ the runs

def collect(seeds: list[int], jobs: int, only: list[str] | None, which: str = "mha"):
    mutants, correct = {"features": (features.FEATURE_MUTANTS, features.FEATURE_CORRECT),
                        "decoding": (decoding.DECODING_MUTANTS, decoding.DECODING_CORRECT),
                        "kernels": (kernels.KERNEL_MUTANTS, kernels.KERNEL_CORRECT),
                        "varlen": (varlen.VARLEN_MUTANTS, varlen.VARLEN_CORRECT)}.get(which, (zoo.MUTANTS, CORRECT))
    mutant_names = [n for n, _ in mutants if not only or n in only]
    correct_names = [n for n, _ in correct if not only or n in only]
    tasks = []
    for i, seed in enumerate(seeds):
        tasks += [(n, seed, i > 0) for n in mutant_names]  # first seed: every law, for the matrix
        tasks += [(n, seed, False) for n in correct_names]
    ctx = get_context("spawn")  # fresh interpreters: no OpenMP state inherited from a fork
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        baseline_futures = {n: pool.submit(run_baselines, n) for n in mutant_names + correct_names}
        futures = [pool.submit(certify_one, *t) for t in tasks]
        runs, done = [], 0
        for f in futures:
            runs.append(f.result())
            done += 1
            if done % 10 == 0 or done == len(futures):
                print(f"  {done}/{len(futures)} certifications", file=sys.stderr, flush=True)
        baselines = {n: f.result() for n, f in baseline_futures.items()}
    return mutant_names, correct_names, runs, baselines


# ------------------------------------------------------------------ the report

def _fmt_s(x: float) -> str:
    return f"{x:.1f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(mutant_names, correct_names, runs, baselines, seeds, jobs, argv, which: str = "mha") -> str:
    by = {}
    for r in runs:
        by.setdefault(r.name, {})[r.seed] = r
    first_seed = seeds[0]
    families = list(FAMILIES)
    n_mut = len(mutant_names)

    matrix = {n: by[n][first_seed] for n in mutant_names}
    killed_first = [n for n in mutant_names if matrix[n].killed]
    killed_every = [n for n in mutant_names if all(by[n][s].killed for s in seeds)]
    survivors = {n: [s for s in seeds if not by[n][s].killed] for n in mutant_names}
    survivors = {n: s for n, s in survivors.items() if s}
    false_alarms = [(n, s, r) for n in correct_names for s in seeds for r in by[n][s].failed + by[n][s].errors]
    suite_errors = [(n, s, r) for n in mutant_names for s in seeds for r in by[n][s].errors]
    batteries = list({"kernels": KERNEL_BASELINES, "varlen": VARLEN_BASELINES}.get(which, BASELINES))
    base_kills = {b: [n for n in mutant_names if baselines[n][b].killed] for b in batteries}
    base_false = {b: [n for n in correct_names if baselines[n][b].killed] for b in batteries}

    ttf = {n: [by[n][s].first_failure[1] for s in seeds if by[n][s].first_failure] for n in mutant_names}
    all_ttf = [t for ts in ttf.values() for t in ts]
    cert_walls = [by[n][s].wall for n in correct_names for s in seeds]

    unique = {f: [] for f in families}
    for n in killed_first:
        fams = matrix[n].families_killing
        if len(fams) == 1:
            unique[next(iter(fams))].append(n)

    out = []
    w = out.append
    w("# Kill matrix\n")
    w(f"Generated by `python -m tests.zoo.kill_matrix {' '.join(argv)}`".rstrip() +
      f" on {datetime.date.today().isoformat()}: torch {torch.__version__}, hypothesis {hypothesis.__version__}, "
      f"Python {platform.python_version()}, {os.cpu_count()} cores, {jobs} worker processes "
      f"(one thread each), the default profile (`attnspec`), "
      f"{sum(law.contract == ('kernel' if which in ('kernels', 'varlen') else 'module') for law in LAWS.values())} laws in "
      f"{len(families)} families, "
      f"hypothesis seeds {_seed_list(seeds)}.\n")
    if which == "varlen":
        w("The varlen zoo (`tests/zoo/varlen.py`): `PagedAttention` (`impls/kernels/paged.py`: varlen attention, a "
          "contiguous or paged KV cache, the cache step with rotary and split-KV, on the tiled FlashAttention-2 kernel), "
          "certified through its canonical signatures with its own declaration (`bitwise_hints`); "
          f"{n_mut} mutants of it with one realistic bug each, each certified through the entry point of its bug "
          "(each with a comment naming the bug, its tracker where there is one, and the configurations that hide it); "
          f"{len(correct_names)} correct variants that must be accepted (the FlashInfer-layout adapter among them).\n")
    elif which == "kernels":
        w("The kernel zoo (`tests/zoo/kernels.py`): `TiledAttention` (`impls/kernels/tiled.py`: FlashAttention-2 "
          "style, online softmax over 32 x 16 tiles, a backward recomputed from the LSE), certified through its "
          f"canonical signature with nothing declared; {n_mut} mutants of it with one realistic kernel bug each "
          "(each with a comment naming the bug, its tracker where there is one, and the configurations that hide "
          f"it); {len(correct_names) - 1} correct variant(s) that must be accepted (the reference among them).\n")
    elif which == "features":
        w("The features zoo (`tests/zoo/features.py`): `ModernAttention` (`impls/modern_attention.py`: a causal "
          "flag of either alignment, num_kv_heads, a sliding window, masks), certified with each alignment; "
          f"{n_mut} mutants of it with one realistic bug each (each with a comment naming the bug and the "
          f"configurations that hide it); {len(correct_names) - 2} further equivalent variant(s) that must be "
          "accepted.\n")
    elif which == "decoding":
        w("The decoder zoo (`tests/zoo/decoding.py`): `ModernAttention` with rotary positions (RoPE, declared by "
          "the adapter: `attnspec.Rope`) and a preallocated key/value cache (`new_cache`/`decode`), bottom-right "
          f"alignment; {n_mut} mutants of it with one realistic bug each (each with a comment naming the bug and "
          f"the configurations that hide it); {len(correct_names)} correct variants that must be accepted.\n")
    else:
        w("The zoo (`tests/zoo/`): `ZooMHA`, a correct from-scratch drop-in; "
          f"{n_mut} mutants of it with one realistic bug each (`mutants.py`, each with a comment naming the bug "
          f"and the configurations that hide it); {sum(n != 'ZooMHA' for n in correct_names)} equivalent "
          "variant(s) that compute the same function differently and must be accepted.\n")

    w("## Three batteries on the same zoo\n")
    w("| battery | mutants killed | false alarms on correct implementations |")
    w("|---|---|---|")
    for b in batteries:
        w(f"| {b} (`tests/zoo/baselines.py`) | **{len(base_kills[b])} / {n_mut}** | "
          f"{len(base_false[b])} / {len(correct_names)} |")
    w(f"| attnspec, every law, seed {first_seed} | **{len(killed_first)} / {n_mut}** | "
      f"{sum(1 for n in correct_names if by[n][first_seed].failed)} / {len(correct_names)} |")
    if len(seeds) > 1:
        w(f"| attnspec, killed under every one of {len(seeds)} seeds | **{len(killed_every)} / {n_mut}** | "
          f"{len({(n, s) for n, s, _ in false_alarms})} / {len(correct_names) * len(seeds)} certifications |")
    w("")
    if which == "varlen":
        w("*shape-only*: call the entry point on two shapes (grouped heads, causal, the LSE asked for; the cache step "
          "with one new row); look at the shapes. *FA2 grid*: for a varlen mutant, FlashAttention 2's "
          "`test_flash_attn_varlen_output` cut to two CPU cores (seqlens (113, 203) and (108, 256) padded at random "
          "to 20 fewer, 3 sequences, d in {32, 59}, causal, local, ALiBi, softcap {0, 50}, mha and gqa, bfloat16; "
          "out, dq, dk, dv within 2x the same-dtype reference's error); for a cache-step mutant, "
          "`test_flash_attn_kvcache` cut the same way (new_kv, causal, local, rotary fraction {0, 0.5, 1}, pages of "
          "256 in a random order, cache_batch_idx, in full; ALiBi, num_splits {1, 0}, gqa and rotary_interleaved by "
          "turns; (seqlen_q, seqlen_k) in (1, 128), (3, 339), (16, 80); the output within 3x (5x with ALiBi) and "
          "the cache rows written as FA2 checks them).\n")
    elif which == "kernels":
        w("*shape-only*: call the kernel on two shapes (grouped heads, causal, the LSE asked for); look at the "
          "shapes. *FA2 grid*: FlashAttention 2's `test_flash_attn_output` cut to two CPU cores: seqlens (113, 203) "
          "and (108, 256), d in {32, 59}, causal, local (a random window), ALiBi, softcap {0, 50}, mha and gqa, "
          "bfloat16, batch 2, 4 heads; output, dq, dk and dv within 2x the same-dtype reference's error (+1e-5) of "
          "FA's float32 `attention_ref`, as FA2 asserts; the LSE returned but never compared, as in FA2.\n")
    elif which == "features":
        w("*shape-only*: build the module with num_kv_heads, a window and the causal flag, call it on four shapes "
          "(GQA, MQA with a window, cross-attention, unbatched); look at the shapes. *example grid*: the same "
          "fixed grid of (B, L, S, E, H) x num_kv_heads in {H, 1} x is_causal both ways x window None or (2, 0) "
          "x no mask / key padding x need_weights both ways, default initialisation, compared with "
          "`torch.testing.assert_close` against SDPA (`enable_gqa`, the causal and window masks written out "
          "for the declared alignment) on the module's own projections.\n")
    elif which == "decoding":
        w("*shape-only*: build the module with RoPE, call it on a prompt, then prefill and decode a few tokens "
          "through its cache; look at the shapes. *example grid*: a fixed grid of (B, L, E, H, num_kv_heads) x "
          "prefill {all, half, 1 token} then single tokens, default initialisation: the causal forward against "
          "SDPA on the module's own projections with RoPE written out by the tester from the declared convention, "
          "and the decoded outputs against the module's own forward, with `torch.testing.assert_close`.\n")
    else:
        w("*shape-only*: build the module and call it on the shapes the seed documents use; look at the shapes. "
          "*example grid*: a fixed grid of (B, L, S, E, H), self- and cross-attention, no mask / key padding / "
          "2-D attn_mask, need_weights both ways, default initialisation, torch's state dict copied in, outputs "
          "and weights compared with `torch.testing.assert_close`.\n")

    w("## Timings\n")
    if cert_walls:
        w(f"* Certifying one correct drop-in with every law: median {_fmt_s(statistics.median(cert_walls))}, "
          f"max {_fmt_s(max(cert_walls))} ({len(cert_walls)} certifications, one core each).")
    if all_ttf:
        w(f"* Time to the first failing check for a mutant (laws in the runner's order, shrinking included): "
          f"median {_fmt_s(statistics.median(all_ttf))}, max {_fmt_s(max(all_ttf))} "
          f"({len(all_ttf)} mutant x seed runs).")
    w("")

    w(f"## Matrix (seed {first_seed}, every law)\n")
    w("K = at least one law of the family fails; `.` = none does; E = a law of the family errored. "
      "The time to the first failure is the median / max over the seeds.\n")
    head = ["mutant"] + [FAMILY_SHORT.get(f, f) for f in families] + \
        batteries + ["first failing law", "t first", "bug; hidden when"]
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))
    for n in mutant_names:
        run = matrix[n]
        errs = {r[1] for r in run.errors}
        cells = ["K" if f in run.families_killing else ("E" if f in errs else ".") for f in families]
        base = ["K" if baselines[n][b].killed else "." for b in batteries]
        first = run.first_failure
        t = ttf[n]
        tcell = f"{_fmt_s(statistics.median(t))} / {_fmt_s(max(t))}" if t else "—"
        w(f"| {n} | " + " | ".join(cells + base) +
          f" | {first[0] if first else '**survived**'} | {tcell} | {_cell(_describe(n))} |")
    totals = [str(sum(1 for n in mutant_names if f in matrix[n].families_killing)) for f in families]
    w("| **killed** | " + " | ".join(totals + [str(len(base_kills[b])) for b in batteries]) + " | | | |")
    w("")

    w("## Unique kills per family\n")
    w("Mutants that only one family kills (seed "
      f"{first_seed}). A family with none still earns its time when it kills a mutant *earlier* or names the "
      "broken law more precisely (docs/zoo.md).\n")
    w("*Without the reference* counts the mutants a family kills that the equivalence family (the "
      "comparisons with the float64 reference) does not: what is left for an implementation whose weights "
      "cannot be mapped to the reference. *First* counts the mutants whose first failing law (in the "
      "runner's order) is in the family.\n")
    w("| family | laws | mutants killed | killed by this family only | without the reference | first |")
    w("|---|---|---|---|---|---|")
    law_family = {name: law.family for name, law in LAWS.items()}
    for f in families:
        laws = sum(1 for law in LAWS.values() if law.family == f)
        total = sum(1 for n in mutant_names if f in matrix[n].families_killing)
        beyond = [n for n in mutant_names if f in matrix[n].families_killing
                  and "equivalence" not in matrix[n].families_killing]
        first = sum(1 for n in mutant_names if matrix[n].first_failure
                    and law_family.get(matrix[n].first_failure[0]) == f)
        w(f"| {f} | {laws} | {total} | {', '.join(unique[f]) or '—'} | "
          f"{len(beyond) if f != 'equivalence' else '—'} | {first} |")
    w("")

    w("## Stability across seeds\n")
    w("| seed | mutants killed | survivors | false alarms on correct implementations |")
    w("|---|---|---|---|")
    for s in seeds:
        k = sum(1 for n in mutant_names if by[n][s].killed)
        surv = [n for n in mutant_names if not by[n][s].killed]
        fa = [f"{n}: {r[0]}" for n in correct_names for r in by[n][s].failed + by[n][s].errors]
        w(f"| {s} | {k} / {n_mut} | {', '.join(surv) or '—'} | {', '.join(fa) or '0'} |")
    w("")

    w("## Survivors\n")
    if not survivors:
        w("None: every mutant is killed under every seed.\n")
    for n, ss in survivors.items():
        w(f"* **{n}** (survived seeds {_seed_list(ss)}): {_cell(_describe(n))}")
    w("")

    w("## Correct implementations\n")
    w("| implementation | what differs | accepted under | certification time (median / max) |")
    w("|---|---|---|---|")
    for n in correct_names:
        ok = [s for s in seeds if not (by[n][s].failed or by[n][s].errors)]
        walls = [by[n][s].wall for s in seeds]
        desc = "the base drop-in" if n in ("ZooMHA", "ModernAttention", "DecoderAttention") else \
            "the base kernel" if n == "TiledAttention" else "the float64 reference as a kernel" if n == "reference" \
            else _cell(_describe(n))
        w(f"| {n} | {desc} | {len(ok)} / {len(seeds)} seeds | "
          f"{_fmt_s(statistics.median(walls))} / {_fmt_s(max(walls))} |")
    w("")
    if false_alarms:
        w("### False alarms\n")
        for n, s, r in false_alarms:
            w(f"* {n}, seed {s}: {r[0]} ({r[2]}): {_cell(r[4])}")
        w("")
    if suite_errors:
        w("### Suite errors on mutants (not counted as kills)\n")
        for n, s, r in suite_errors:
            w(f"* {n}, seed {s}: {r[0]}: {_cell(r[4])}")
        w("")

    w("## Baseline reasons\n")
    w("| mutant | " + " | ".join(batteries) + " |")
    w("|---|---|---|")
    for n in mutant_names:
        cells = [_cell(baselines[n][b].reason[:140]) if baselines[n][b].killed else "survived" for b in batteries]
        w(f"| {n} | " + " | ".join(cells) + " |")
    w("")
    return "\n".join(out)


def _seed_list(seeds) -> str:
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.zoo.kill_matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="run under N hypothesis seeds (0..N-1). Default: %(default)r")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), metavar="J",
                        help="worker processes. Default: %(default)r")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="where to write the matrix. Default: docs/kill_matrix.md (docs/kill_matrix_features.md "
                             "with --zoo features)")
    parser.add_argument("--zoo", choices=("mha", "features", "decoding", "kernels", "varlen"), default="mha",
                        help="the nn.MultiheadAttention zoo, the causal flag / GQA / window one, or the RoPE / KV "
                             "cache one. Default: %(default)r")
    parser.add_argument("--only", nargs="*", metavar="NAME", help="restrict to these mutants/variants")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error(f"--seeds={args.seeds} and --jobs={args.jobs} must both be at least 1")
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    args.out = args.out or {"features": "docs/kill_matrix_features.md", "decoding": "docs/kill_matrix_decoding.md",
                            "kernels": "docs/kill_matrix_kernels.md",
                            "varlen": "docs/kill_matrix_varlen.md"}.get(args.zoo, "docs/kill_matrix.md")
    mutant_names, correct_names, runs, baselines = collect(seeds, args.jobs, args.only, args.zoo)
    shown = list(argv if argv is not None else sys.argv[1:])
    text = render(mutant_names, correct_names, runs, baselines, seeds, args.jobs, shown, args.zoo)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    killed = sum(1 for n in mutant_names if all(r.killed for r in runs if r.name == n))
    alarms = sum(1 for r in runs if r.name in correct_names and (r.failed or r.errors))
    print(f"wrote {args.out}: {killed}/{len(mutant_names)} mutants killed under every seed, "
          f"{alarms} false alarms, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0 if killed == len(mutant_names) and not alarms else 1


if __name__ == "__main__":
    sys.exit(main())
