"""The kernel contract: declarations, signatures, loading, the laws' power on kernels the zoo does not cover,
FlexAttention and Triton with small budgets, and certification from an empty folder as a stranger runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnspec.checks import LAWS
from attnspec.kernel import CanonicalKernel, KernelCapabilities, declare_kernel
from attnspec.kernel.case import KernelCase
from attnspec.kernel.declaration import DeclarationError, SignatureError, capabilities_of
from attnspec.kernel.problem import KernelProblem
from attnspec.kernel.reference import attention as reference_attention
from attnspec.loading import ImplLoadError, load_impl
from attnspec.requirements import decide
from attnspec.runner import certify, run_law
from attnspec.impls.kernels import reference

ROOT = Path(__file__).resolve().parents[1]
STRANGERS = ROOT / "tests" / "strangers"


# ------------------------------------------------------------------ declarations and signatures

def e(**claims):
    return pytest.param(claims, id=", ".join(f"{k}={v!r}" for k, v in claims.items()))


BAD_DECLARATIONS = [
    e(dtypes=()), e(dtypes=("float8",)), e(dtypes=torch.int32), e(devices=("tpu",)), e(head_dims=0),
    e(head_dims=range(0)), e(head_dims=(64, -1)), e(causal_alignment="top-right"), e(lse_base="10"),
    e(lse_layout="LBH"), e(strides="some"), e(fully_masked_rows="nan"), e(tolerance_factor=0.5),
    e(tolerance_factor=float("inf")), e(backward="yes"), e(max_seqlen_q=0), e(window_sizes=(1, 2)),
]


@pytest.mark.parametrize("claims", BAD_DECLARATIONS)
def test_bad_declarations_raise_naming_the_argument_and_value(claims):
    (name, value), = claims.items()
    with pytest.raises(DeclarationError) as raised:
        declare_kernel(**claims)
    assert f"{name}=" in str(raised.value) and repr(value)[:12] in str(raised.value), str(raised.value)


def test_an_undeclared_kernel_claims_what_its_signature_has():
    def attn(q, k, v, *, causal=False, softmax_scale=None):
        return q

    caps = capabilities_of(attn, "attn")
    assert caps.causal and caps.softmax_scale and not (caps.window or caps.softcap or caps.alibi or caps.lse)
    assert caps.dtypes == (torch.float64, torch.float32, torch.bfloat16) and caps.backward and caps.head_dims is None


def test_a_declaration_narrows_and_never_widens():
    @declare_kernel(dtypes=("float32",), head_dims=range(8, 129, 8), lse_base=2)
    def attn(q, k, v, *, return_lse=False):
        return q

    caps = capabilities_of(attn, "attn")
    assert caps.dtypes == (torch.float32,) and 64 in caps.head_dims and 60 not in caps.head_dims
    assert caps.lse_base == "2"
    attn.attnspec_kernel = {"softcap": True}
    with pytest.raises(DeclarationError, match="declares softcap=True, but its signature has no 'softcap'"):
        capabilities_of(attn, "attn")


@pytest.mark.parametrize("value, message", [
    ("torch.nn.functional:softmax", "its parameter 'dtype' is not an option"),
    ("torch:add", "cannot read its signature|is not an option|neither"),
])
def test_functions_of_other_signatures_are_not_kernels(value, message):
    with pytest.raises(ImplLoadError, match=message):
        load_impl(value)
    with pytest.raises(SignatureError):
        capabilities_of(lambda x, y: x, "two arguments")


def test_a_kernel_function_loads_by_its_origin():
    adapter = load_impl("attnspec.impls.kernels.tiled:attn")
    assert isinstance(adapter, CanonicalKernel) and adapter.capabilities == KernelCapabilities()
    assert decide(LAWS["kernel_output_matches_reference"], adapter.capabilities).claimed
    assert not decide(LAWS["output_matches_reference"], adapter.capabilities).claimed  # the module contract's law


# ------------------------------------------------------------------ each law fails on a bug it names

def _wrapped(fn, name):
    """A canonical kernel around ``fn(q, k, v, **options)``, named for its bug."""
    def attn(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
             return_lse=False):
        return fn(q, k, v, causal=causal, softmax_scale=softmax_scale, window_size=window_size, softcap=softcap,
                  alibi_slopes=alibi_slopes, return_lse=return_lse)
    return CanonicalKernel(attn, name=name)


_CALLS = [0]


def _noisy(q, k, v, **options):
    """The reference, plus a last-bit difference on every other call (a reduction order that changes)."""
    _CALLS[0] += 1
    result = reference.attn(q, k, v, **options)
    out = result[0] if isinstance(result, tuple) else result
    out = out + (_CALLS[0] % 2) * torch.finfo(out.dtype).eps * out.abs()
    return (out, result[1]) if isinstance(result, tuple) else out


class _NoisyBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q):
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        _CALLS[0] += 1
        return grad * (1 + (_CALLS[0] % 2) * torch.finfo(grad.dtype).eps)


def _noisy_backward(q, k, v, **options):
    return reference.attn(_NoisyBackward.apply(q), k, v, **options)


def _unchecked(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
               return_lse=False):
    """The reference without its argument checks: a batch of one broadcasts against two, silently."""
    p = KernelProblem(Lq=q.shape[1], Lk=k.shape[1], causal=causal, window=tuple(window_size))
    k = k.repeat_interleave(max(q.shape[2] // max(k.shape[2], 1), 1), dim=2)
    v = v.repeat_interleave(max(q.shape[2] // max(v.shape[2], 1), 1), dim=2)
    out, lse = reference_attention(q.double(), k.double(), v.double(), hidden=p.hidden(), softcap=softcap,
                                   scale=q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale)
    return (out.to(q.dtype), lse.float()) if return_lse else out.to(q.dtype)


def _ignores_strides(q, k, v, **options):
    """Reads its inputs as if they were contiguous (a kernel handed data_ptr and shape only)."""
    dense = [torch.as_strided(t, t.shape, torch.empty(t.shape).stride(), t.storage_offset()) for t in (q, k, v)]
    return reference.attn(*dense, **options)


def _cap_without_division(q, k, v, *, softcap=0.0, **options):
    """softcap * tanh(s) for softcap * tanh(s / softcap): right for softcap = 1 only."""
    return reference.attn(q, k, v, softcap=0.0, **options) if not softcap else \
        reference.attn(q * softcap, k, v, softcap=softcap, **options)


def _undeclared_widths(q, k, v, **options):
    return reference.attn(q, k, v, **options)


_undeclared_widths.attnspec_kernel = {"head_dims": (4,)}


BROKEN = [  # (law, kernel, why the law must reject it)
    ("forward_is_bitwise_repeatable", _wrapped(_noisy, "noisy"), "a last-bit difference between two calls"),
    ("deterministic_backward", _wrapped(_noisy_backward, "noisy backward"), "a backward that differs between runs"),
    ("rejects_inconsistent_shapes", CanonicalKernel(_unchecked, name="unchecked"), "broadcasts a batch of one"),
    ("strided_inputs_equal_contiguous", _wrapped(_ignores_strides, "strides ignored"), "reads views as contiguous"),
    ("huge_softcap_equals_none", _wrapped(_cap_without_division, "cap without division"), "softcap * tanh(s)"),
    ("rejects_undeclared_inputs", CanonicalKernel(_undeclared_widths, name="undeclared widths"),
     "declares head_dims=(4,) and computes every width"),
]


@pytest.mark.parametrize("law, kernel, why", BROKEN, ids=[b[0] for b in BROKEN])
def test_the_law_rejects_a_kernel_with_its_bug(law, kernel, why):
    verdict = run_law(LAWS[law], kernel, dtype=torch.float64, max_examples=10, seed=0, shrink=False)
    assert verdict.status == "fail", f"{law} should reject a kernel that {why}: {verdict.status} {verdict.message}"


def test_the_mean_bound_catches_an_error_spread_thin():
    """Every element off by 0.9x its max bound passes the max check and fails the mean one."""
    p = KernelProblem(B=2, Lq=6, Lk=9, Hq=2, Hkv=1, D=4, dtype=torch.float32, seed=3)
    case = KernelCase(load_impl("attnspec.impls.kernels.reference:attn"), p, "cpu", LAWS["kernel_output_matches_reference"])
    x = case.inputs()
    exp = case.expected(x)
    shifted = exp.out + 0.9 * exp.out_tol
    assert 0.9 * exp.out_tol > exp.mean_tol  # the mean bound is the tighter one
    with pytest.raises(Exception, match="mean"):
        case.assert_output(shifted, exp)


def test_a_base_2_lse_is_named():
    from tests.zoo.kernels import LseBase2
    verdict = run_law(LAWS["lse_matches_reference"], CanonicalKernel(LseBase2(), name="base 2"),
                      dtype=torch.float64, max_examples=10, seed=0, shrink=False)
    assert verdict.status == "fail" and "log2(e)" in verdict.message, verdict.message


# ------------------------------------------------------------------ FlexAttention and Triton, small budgets

# the laws that exercise FlexStyle's translation (score_mod, block_mask, layouts, the LSE): eager FlexAttention
# costs ~30 ms a call and a new closure more, so the default run gives it these, with two examples each
FLEX_LAWS = ("kernel_output_matches_reference", "lse_matches_reference", "causal_alignment_matches_declared",
             "window_matches_reference", "kernel_alibi_matches_reference", "kernel_softcap_matches_reference",
             "strided_inputs_equal_contiguous", "kernel_gradients_match_reference")


def test_flex_attention_certifies():
    from attnspec.impls.kernels.flex import FLEX
    verdicts = certify(FLEX, dtype=torch.float32, laws=FLEX_LAWS, max_examples=2, seed=0)
    bad = [f"{v.law}: {v.status} {v.message}" for v in verdicts if v.status not in ("pass", "not claimed", "deviation")]
    assert not bad, "\n".join(bad)
    assert any(v.law == "kernel_softcap_matches_reference" and v.status == "pass" for v in verdicts)
    assert any(v.law == "kernel_gradients_match_reference" and v.status == "not claimed" for v in verdicts)


def test_triton_kernel_certifies_under_the_interpreter(tmp_path):
    """docs/kernels.md's Triton command, cut to one law in float32 (the interpreter takes a third of a second a call;
    the whole run is recorded in docs/kernels.md)."""
    pytest.importorskip("triton", reason="the triton extra is not installed (pip install 'attnspec[triton]')")
    assert torch.bfloat16 not in load_impl("attnspec.impls.kernels.triton_attention:attn").capabilities.dtypes
    done = certify_command("attnspec.impls.kernels.triton_attention:attn", tmp_path, "--hypothesis-profile",
                           "attnspec-quick", "-k", "kernel_output_matches_reference and float32",
                           env={"TRITON_INTERPRET": "1"})
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:]


# ------------------------------------------------------------------ from an empty folder, as a stranger

def certify_command(impl: str, tmp_path, *extra, env=None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ATTNSPEC_"))}, **(env or {})}
    env["PYTHONPATH"] = str(STRANGERS)
    return subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "attnspec.suite", "--impl", impl,
                           "-p", "no:cacheprovider", "-q", "-n", "0", *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_strangers_correct_kernel_passes_from_an_empty_folder(tmp_path):
    done = certify_command("grouped_chunks:attn", tmp_path, "-k", "float32 and (output or lse or window or alibi)")
    assert done.returncode == 0 and " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-3000:]


@pytest.mark.parametrize("module, law", [("buggy_top_left", "causal_alignment_matches_declared"),
                                         ("buggy_lse_layout", "lse_matches_reference")])
def test_a_strangers_buggy_kernel_fails_the_law_that_names_its_bug(tmp_path, module, law):
    done = certify_command(f"{module}:attn", tmp_path, "-k", f"float64 and {law}")
    assert done.returncode == 1 and f"breaks {law}" in done.stdout, done.stdout[-3000:]


# ------------------------------------------------------------------ docs/kernels.md's commands are run

# each shell command docs/kernels.md shows -> the test that runs it (with a small budget)
DOC_COMMANDS = {
    "pytest --pyargs attnspec.suite --impl mypkg.ops:attn": "test_a_strangers_correct_kernel_passes_from_an_empty_folder",
    "TRITON_INTERPRET=1 pytest --pyargs attnspec.suite --impl attnspec.impls.kernels.triton_attention:attn "
    "--hypothesis-profile attnspec-quick -n 2": "test_triton_kernel_certifies_under_the_interpreter",
    "python -m tests.zoo.kill_matrix --zoo kernels --seeds 20": "tests/test_zoo.py::test_kernel_kill_matrix_command",
    "python -m pytest tests/bench/test_kernel_bench.py -n 0 --benchmark-only --benchmark-min-rounds=3":
        "tests/bench/test_kernel_bench.py (each case once, untimed, in every run)",
}


def test_every_command_in_the_kernel_docs_is_run_by_a_test():
    text = (ROOT / "docs" / "kernels.md").read_text()
    blocks = text.split("```bash\n")[1:]
    shown = {line.strip() for block in blocks for line in block.split("```")[0].splitlines() if line.strip()}
    assert shown == set(DOC_COMMANDS), f"commands shown but not run: {shown - set(DOC_COMMANDS)}; " \
                                       f"run but no longer shown: {set(DOC_COMMANDS) - shown}"
    here = globals()
    zoo = (ROOT / "tests" / "test_zoo.py").read_text()
    for runner in DOC_COMMANDS.values():
        name = runner.split("::")[-1].split(" ")[0]
        assert name in here or f"def {name}(" in zoo or name.endswith(".py"), runner
