"""The varlen and cache-step entry points: signatures and declarations, the dense call each answers, FlashInfer's CSR
pages, a broken kernel for what the zoo does not cover, strangers' functions from an empty folder, one GPU per
pytest-xdist worker, and the GPU script on a machine without one."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attnspec.checks import LAWS
from attnspec.gpus import assignment, pin
from attnspec.impls.kernels import BUNDLED, paged
from attnspec.impls.kernels.tiled import TiledAttention
from attnspec.kernel import KernelCapabilities, declare_kernel
from attnspec.kernel.declaration import DeclarationError, SignatureError, capabilities_of
from attnspec.kernel.entries import CacheStepAdapter, CanonicalCacheStep, CanonicalVarlen, canonical, to_csr
from attnspec.loading import load_impl
from attnspec.requirements import decide
from attnspec.runner import run_law
from tests.test_kernels import certify_command

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ signatures and declarations

def e(**claims):
    return pytest.param(claims, id=", ".join(f"{k}={v!r}" for k, v in claims.items()))


@pytest.mark.parametrize("claims", [
    e(rows_past_cu_seqlens="drop"), e(unused_gradients="nan"), e(page_sizes=0), e(page_sizes=range(0)),
    e(rotary_pairings=("neox",)), e(rotary_queries="all"), e(bitwise_hints=("speed",)), e(entry="paged"),
    e(contiguous_cache="no"),
])
def test_bad_declarations_name_the_claim_and_value(claims):
    (name, value), = claims.items()
    with pytest.raises(DeclarationError) as raised:
        declare_kernel(**claims)
    assert f"{name}=" in str(raised.value) and repr(value)[:10] in str(raised.value), str(raised.value)


def test_the_entry_point_comes_from_the_parameter_names():
    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False, return_lse=False):
        return q

    def step(q, k_cache, v_cache, *, cache_seqlens, block_table=None, rotary_cos=None, rotary_sin=None):
        return q

    caps = capabilities_of(varlen, "varlen")
    assert caps.entry == "varlen" and caps.causal and caps.lse and not (caps.seqused_k or caps.num_splits)
    assert isinstance(canonical(varlen), CanonicalVarlen)
    caps = capabilities_of(step, "step")
    assert caps.entry == "kvcache" and caps.paged and caps.rotary and not (caps.new_kv or caps.cache_batch_idx)
    assert caps.rotary_pairings == ("interleaved",) and not caps.backward  # no rotary_interleaved keyword
    assert isinstance(canonical(step), CanonicalCacheStep)
    step.attnspec_kernel = {"rotary_pairings": ("rotate_half",)}
    with pytest.raises(DeclarationError, match="no 'rotary_interleaved' keyword"):
        capabilities_of(step, "step")


@pytest.mark.parametrize("fn, message", [
    (lambda q, k, v, cu_seqlens_q, max_seqlen_q: q, "has no parameter 'cu_seqlens_k'"),
    (lambda q, k_cache, v_cache, k=None, *, cache_seqlens: q, "has 'k' but not 'v'"),
    (lambda q, k_cache, v_cache, *, cache_seqlens, rotary_cos=None: q, "has 'rotary_cos' but not 'rotary_sin'"),
])
def test_half_a_signature_is_refused_saying_what_is_missing(fn, message):
    with pytest.raises(SignatureError, match=message):
        capabilities_of(fn, "fn")


def test_a_declaration_narrows_an_entry_point_and_never_changes_it():
    def step(q, k_cache, v_cache, *, cache_seqlens):
        return q

    step.attnspec_kernel = {"entry": "varlen"}
    with pytest.raises(DeclarationError, match="declares entry='varlen', but its signature is the kvcache one"):
        capabilities_of(step, "step")
    step.attnspec_kernel = {"paged": True}
    with pytest.raises(DeclarationError, match="declares paged=True, but its signature has no 'block_table'"):
        capabilities_of(step, "step")


def test_the_bundled_functions_load_by_their_origin_with_their_declaration():
    varlen = load_impl("attnspec.impls.kernels.paged:attn_varlen")
    step = load_impl("attnspec.impls.kernels.paged:attn_with_kvcache")
    assert varlen.capabilities.entry == "varlen" and step.capabilities.entry == "kvcache"
    assert varlen.capabilities.bitwise_hints == ("max_seqlen", "cache_length")
    assert decide(LAWS["varlen_matches_reference"], varlen.capabilities).claimed
    assert not decide(LAWS["varlen_matches_reference"], step.capabilities).claimed
    assert "paged varlen (kernel)" in [a.name for a in BUNDLED]


def test_gpu_adapters_are_not_claimed_on_the_cpu():
    for origin in ("attnspec.impls.kernels.flash_attn:FLASH_ATTN_VARLEN",
                   "attnspec.impls.kernels.flash_attn:FLASH_ATTN_KVCACHE",
                   "attnspec.impls.kernels.torch_varlen:TORCH_VARLEN"):
        adapter = load_impl(origin)
        claim = decide(LAWS["kernel_output_matches_reference"], adapter.capabilities, "cpu")
        assert not claim.claimed and "device cpu" in claim.why(), origin


# ------------------------------------------------------------------ the dense call each entry point answers

def test_the_dense_call_of_each_entry_point_is_the_dense_kernel():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    want, want_lse = TiledAttention()(q, k[:, :, :2], v[:, :, :2], causal=True, return_lse=True)
    for adapter in (canonical(paged.attn_varlen), canonical(paged.attn_with_kvcache)):
        out, lse = adapter.attend(q, k[:, :, :2], v[:, :, :2], causal=True, return_lse=True)
        assert torch.allclose(out, want, atol=1e-12) and torch.allclose(lse, want_lse, atol=1e-6), adapter.name

    class PagesOnly(CacheStepAdapter):
        capabilities = KernelCapabilities(entry="kvcache", backward=False, contiguous_cache=False)

        def attend_cache(self, q, k_cache, v_cache, **options):
            assert options["block_table"].shape == (2, 1) and k_cache.shape == (2, 16, 2, 8)
            return paged.attn_with_kvcache(q, k_cache, v_cache, **options)

    out = PagesOnly().attend(q, k[:, :, :2], v[:, :, :2], causal=True)
    assert torch.allclose(out, want, atol=1e-12)


def test_flashinfer_csr_pages_are_the_block_table_exactly():
    table = torch.tensor([[4, 0, 7], [2, 5, 1], [3, 6, 8]], dtype=torch.int32)
    indptr, indices, last = to_csr(table, torch.tensor([5, 0, 9]), page_size=4)
    assert indptr.tolist() == [0, 2, 2, 5] and indices.tolist() == [4, 0, 3, 6, 8] and last.tolist() == [1, 0, 1]
    assert indptr.dtype == indices.dtype == last.dtype == torch.int32
    with pytest.raises(ValueError, match="need more than the block table's 3 pages of 4 rows"):
        to_csr(table, torch.tensor([13, 0, 0]), page_size=4)


# ------------------------------------------------------------------ laws on kernels the zoo does not cover

def _base2_lse_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                      softmax_scale=None, return_lse=False):
    """The bundled varlen kernel with its LSE in base 2 (undeclared): every merge through it is off."""
    out = paged.attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                            softmax_scale=softmax_scale, return_lse=return_lse)
    return (out[0], out[1] / torch.log(torch.tensor(2.0))) if return_lse else out


def test_a_merge_that_needs_the_other_base_says_so():
    verdict = run_law(LAWS["split_kv_merge_equals_full"], CanonicalVarlen(_base2_lse_varlen, name="base 2"),
                      dtype=torch.float64, max_examples=10, seed=0, shrink=False)
    assert verdict.status == "fail" and "merged as base-2 LSEs they do match" in verdict.message, verdict.message


# ------------------------------------------------------------------ strangers' functions, from an empty folder

def test_strangers_correct_functions_pass_from_an_empty_folder(tmp_path):
    done = certify_command("varlen_padded:attn_varlen", tmp_path, "--impl", "cache_gather:attn_with_kvcache", "-k",
                           "(float32 and (varlen or segments or unread)) or (float64 and (cache or paged or rotary or "
                           "decode or prefill))")
    assert done.returncode == 0 and " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-3000:]
    assert "varlen_padded:attn_varlen f32" in done.stdout and "cache_gather:attn_with_kvcache f64" in done.stdout


BUGGY = {"varlen_masked_tail:attn_varlen": "unread_memory_is_dont_care",  # reads keys past seqused_k, weight 0
         "cache_neox_only:attn_with_kvcache": "rotary_matches_reference"}  # rotate_half whatever rotary_interleaved says


def test_strangers_buggy_functions_fail_the_law_that_names_their_bug(tmp_path):
    impls = [a for impl in BUGGY for a in ("--impl", impl)][1:]
    done = certify_command(impls[0], tmp_path, *impls[1:], "-k", f"float64 and ({' or '.join(BUGGY.values())})")
    assert done.returncode == 1, done.stdout[-3000:]
    for impl, law in BUGGY.items():
        assert f"{impl} breaks {law}" in done.stdout, done.stdout[-3000:]
    assert "with rotate_half pairs: rotary_interleaved=False is read the other way" in done.stdout


# ------------------------------------------------------------------ one GPU per pytest-xdist worker

@pytest.mark.parametrize("worker, environ, count, gpu", [
    ("gw0", {}, 4, "0"), ("gw5", {}, 4, "1"), ("gw3", {"CUDA_VISIBLE_DEVICES": "2,5,7"}, 0, "2"),
    ("gw1", {"CUDA_VISIBLE_DEVICES": "GPU-a, GPU-b"}, 0, "GPU-b"),
    ("gw2", {}, 1, None), ("gw2", {}, 0, None), (None, {}, 4, None), ("master", {}, 4, None),
])
def test_each_worker_keeps_the_gpu_of_its_id(worker, environ, count, gpu):
    assert assignment(worker, environ, lambda: count) == gpu


def test_pinning_sets_the_workers_environment_once_and_only_there():
    environ = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert pin("gw3", environ, lambda: 0) == "1" and environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert pin("gw3", environ, lambda: 0) is None  # one GPU left: nothing more to do
    untouched = {}
    assert pin(None, untouched, lambda: 8) is None and untouched == {}


def test_the_plugin_pins_in_workers_unless_told_otherwise(monkeypatch):
    from attnspec import plugin
    pinned = []
    monkeypatch.setattr("attnspec.gpus.pin", lambda workerid: pinned.append(workerid))

    def config(worker: bool, gpus: str):
        ns = SimpleNamespace(stash={}, getoption=lambda name: gpus)
        if worker:
            ns.workerinput = {"workerid": "gw1"}
        return ns

    for worker, gpus in ((True, "per-worker"), (True, "all"), (False, "per-worker")):
        plugin._pin_gpu(config(worker, gpus))
    assert pinned == ["gw1"]


# ------------------------------------------------------------------ the GPU script, on a machine without one

def _script():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import cuda_kernels
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return cuda_kernels


def test_the_gpu_script_says_there_is_no_cuda_and_changes_nothing(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the script would certify for minutes (tools/cuda_kernels.py --run)")
    cuda_kernels = _script()
    page = tmp_path / "cuda.md"
    page.write_text("before\n")
    assert cuda_kernels.main(["--run", "--out", str(page)]) == 2 and page.read_text() == "before\n"
    assert "CUDA is not available" in capsys.readouterr().err
    assert cuda_kernels.main(["--plan"]) == 0
    plan = capsys.readouterr().out
    assert "FLASH_ATTN_KVCACHE` | kvcache" in plan and "TORCH_VARLEN` | varlen" in plan, plan
    with pytest.raises(SystemExit):
        cuda_kernels.main(["--run", "--budget", "-1"])
    assert "--budget=-1.0, but should be a positive number of seconds" in capsys.readouterr().err


def test_the_gpu_scripts_section_replaces_its_markers_only(tmp_path):
    cuda_kernels = _script()
    page = tmp_path / "cuda.md"
    page.write_text(f"# record\n\n{cuda_kernels.BEGIN}\nold\n{cuda_kernels.END}\n\nafter\n")
    section = cuda_kernels.render([("pkg:ADAPTER", None, 0.0, None)], {"gpu": "G", "torch": "t", "cuda": "c",
                                                                      "gpus": 2}, 280)
    cuda_kernels.write(section, page)
    text = page.read_text()
    assert "old" not in text and "not run: out of time" in text and text.endswith("\n\nafter\n")
