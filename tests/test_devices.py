"""Self-tests of the device and dtype machinery: the dtype axis, kernel adapters, the cross-device law."""
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis.errors import InvalidArgument
from torch import nn

from attnspec.impls import sdpa_kernels
from attnspec import Capabilities, DropIn
from attnspec.adapter import unavailable_reason
from attnspec.case import Case
from attnspec.checks import LAWS
from attnspec.errors import ConformanceFailure, Mismatch
from attnspec.requirements import DEVICE_DTYPES, decide
from attnspec.runner import run_law
from attnspec.strategies import problems_for

TORCH = DropIn(nn.MultiheadAttention, name="torch")


# -- capabilities and strategies -------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(problems_for(Capabilities(head_dim_multiple=8), dtype=torch.float32))
def test_head_widths_are_multiples_when_asked(p):
    assert p.config.head_dim % 8 == 0 and p.dtype == torch.float32


@pytest.mark.parametrize("changes, name", [
    (dict(head_dim_multiple=0), "head_dim_multiple"),
    (dict(dtypes=(torch.int32,)), "dtypes"),
    (dict(devices=("tpu",)), "devices"),
])
def test_bad_capabilities_name_the_field(changes, name):
    with pytest.raises(ValueError, match=name):
        Capabilities(**changes)


def test_a_non_float_dtype_is_rejected():
    with pytest.raises(InvalidArgument, match="dtype=torch.int32"):
        problems_for(Capabilities(), dtype=torch.int32).example()


def test_unclaimed_dtype_and_device_only_laws_are_explained():
    caps = Capabilities(dtypes=(torch.float64,), devices=("cpu",))
    law = LAWS["output_matches_reference"]
    assert decide(law, caps, "cpu", torch.bfloat16).reasons == ("dtype bfloat16",)
    assert decide(law, caps, "cpu", torch.float64).claimed
    across = decide(LAWS["cuda_matches_cpu"], Capabilities(), "cpu", torch.float64).reasons
    assert across == ("a CUDA device (this law compares it with the CPU)",)
    assert decide(LAWS["cuda_matches_cpu"], caps, "cuda").reasons == ("device cuda", "cpu and cuda")


def test_every_device_certifies_float64_float32_bfloat16_and_cuda_float16():
    assert DEVICE_DTYPES["cpu"] == (torch.float64, torch.float32, torch.bfloat16)
    assert DEVICE_DTYPES["cuda"] == (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def test_the_suite_is_parametrised_by_device_and_dtype():
    """Collection alone: one case per law, device and dtype, float16 on CUDA only; without CUDA, one case for all."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "attnspec.suite", "--impl", "attnspec.impls.sdpa:SDPA",
                          "--collect-only", "-q", "-p", "no:cacheprovider", "-n", "0"],
                         capture_output=True, text=True, timeout=300)
    ids = [line for line in out.stdout.splitlines() if "test_conformance[" in line]
    cpu = [("cpu", "float64"), ("cpu", "float32"), ("cpu", "bfloat16")]
    module_laws = sum(law.contract == "module" for law in LAWS.values())  # a module is certified by its contract's laws
    if torch.cuda.is_available():
        assert len(ids) == module_laws * 7, out.stdout[-2000:]
        cpu.append(("cuda", "float16"))
    else:
        assert len(ids) == module_laws * 3 + 1 and sum("test_conformance[cuda|every_case]" in i for i in ids) == 1, ids
    for device, dtype in cpu:
        assert any(f"|output_matches_reference|{device}|{dtype}]" in i for i in ids), (device, dtype)
    assert not any("|cpu|float16]" in i for i in ids)


# -- kernel adapters -------------------------------------------------------------------------
class _Unavailable(DropIn):
    def unavailable(self, device):
        return "the imaginary kernel does not run here"


def test_an_unavailable_kernel_is_skipped_with_its_reason():
    result = run_law(LAWS["output_shapes"], _Unavailable(nn.MultiheadAttention, name="x"), max_examples=1)
    assert (result.status, result.detail) == ("skipped", "the imaginary kernel does not run here")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_kernels_say_why_they_cannot_run_here():
    assert unavailable_reason(sdpa_kernels.FLASH, "cuda") == "CUDA is not available on this machine"
    assert unavailable_reason(sdpa_kernels.FLASH, "cpu") is None  # not claimed on the CPU: reported as such


def test_cpu_kernels_run_here():
    assert sdpa_kernels.MATH.unavailable("cpu") is None
    assert sdpa_kernels.FLASH_CPU.unavailable("cpu") is None


def test_a_pinned_kernel_refuses_what_it_cannot_do():
    """With dropout, the CPU flash kernel has no implementation: pinned, it raises instead of falling back."""
    module = sdpa_kernels.FLASH_CPU.build(_config(dropout=0.5), dtype=torch.float32, device="cpu").train()
    x = torch.randn(3, 1, 4)
    with pytest.raises(RuntimeError, match="No available kernel"):
        module(x, x, x, need_weights=False)


def _config(**changes):
    from attnspec import Config
    return Config(embed_dim=4, num_heads=2, **changes)


# -- the cross-device law --------------------------------------------------------------------
def test_same_nonfinite_accepts_equal_patterns_and_names_the_first_difference():
    case = Case(TORCH, _problem(), "cpu", LAWS["cuda_matches_cpu"])
    a = torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]])
    case.assert_same_nonfinite(a, a.clone(), "output", "on the CPU")
    b = a.clone()
    b[0, 1] = 0.5
    with pytest.raises(Mismatch, match=r"output\[0, 1\] = 0.5, but should be nan like on the CPU"):
        case.assert_same_nonfinite(b, a, "output", "on the CPU")
    c = a.clone()
    c[1, 0] = float("-inf")
    with pytest.raises(Mismatch, match=r"1/4 elements differ"):
        case.assert_same_nonfinite(c, a, "output", "on the CPU")


class _DeviceDependent(nn.MultiheadAttention):
    """Answers differently on every other module built, as a kernel that differs between devices would."""

    built = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        type(self).built += 1
        self.odd = type(self).built % 2 == 1

    def forward(self, *args, **kwargs):
        out, w = super().forward(*args, **kwargs)
        return (out + 0.25 if self.odd else out), w


def test_cross_device_law_catches_an_implementation_that_differs_between_devices():
    """Run here on cpu against cpu: the second build stands in for the other device."""
    adapter = DropIn(_DeviceDependent, name="device-dependent")
    LAWS["cuda_matches_cpu"].check(TORCH, _problem(), "cpu")  # a consistent implementation passes
    with pytest.raises(ConformanceFailure, match="output on cpu.*like on the CPU"):
        LAWS["cuda_matches_cpu"].check(adapter, _problem(), "cpu")


def _problem():
    from attnspec import Config, Problem
    return Problem(config=Config(embed_dim=4, num_heads=2), batch=2, L=3, S=3, dtype=torch.float32,
                   self_attention=True, seed=5)


# -- the CUDA report -------------------------------------------------------------------------
def test_cuda_report_counts_per_dtype_and_lists_every_failure():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tools"))
    import cuda_report
    report = {"environment": {"gpu": "NVIDIA H200", "torch": "2.13.0", "cuda": "13.0", "attnspec": "0",
                              "hypothesis_profile": "attnspec-ci"},
              "implementations": {"sdpa.flash": {"verdicts": {"cuda": {
                  "float16": {"output_shapes": {"status": "pass"},
                              "output_matches_reference": {"status": "fail", "detail": "sdpa.flash breaks it"}},
                  "float64": {"output_shapes": {"status": "not claimed"}}}}}}}
    text = cuda_report.render(report, "python tools/cuda_report.py --run")
    assert "| GPU | NVIDIA H200 |" in text and "| CUDA | 13.0 |" in text
    assert "| `sdpa.flash` | float16 | 1 | 1 | 0 | 0 | 0 | 0 |" in text
    assert "| `sdpa.flash` | float64 | 0 | 0 | 0 | 0 | 1 | 0 |" in text
    assert "## Failures (1): each needs an explanation" in text and "sdpa.flash breaks it" in text
