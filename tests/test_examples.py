"""The README's examples work: an adapter certifies, its buggy twin fails, a partial drop-in declares."""
import subprocess
import sys

from attnspec import DropIn, load_impl
from attnspec.runner import certify


def test_readme_adapter_certifies():
    results = certify(load_impl("tests.examples.fused_qkv:ADAPTER"), max_examples=10)
    bad = [(r.law, r.message) for r in results if r.status in ("fail", "error")]
    assert not bad, bad
    assert sum(r.status == "pass" for r in results) >= 15


def test_readme_adapter_with_the_sqrt_e_bug_fails_with_a_pointed_message():
    results = certify(load_impl("tests.examples.fused_qkv:BROKEN"), laws=["output_matches_reference"])
    assert results[0].status == "fail"
    assert "H=2" in results[0].message or "H=3" in results[0].message or "H=4" in results[0].message


def test_partial_drop_in_declares_in_one_place():
    caps = DropIn(__import__("tests.examples.fused_qkv", fromlist=["PartialDropIn"]).PartialDropIn).capabilities
    assert not caps.add_bias_kv and not caps.kdim_vdim and not caps.per_head_weights and caps.cross_attention


def test_impl_option_certifies_only_the_named_module():
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "--pyargs", "attnspec.suite", "-q", "-p", "no:randomly",
                          "--impl", "tests.examples.fused_qkv:ADAPTER", "--attnspec-devices", "cpu",
                          "-k", "output_shapes or output_matches_reference or inputs_not_modified"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "my-fused-attention" in run.stdout and "nn.MultiheadAttention " not in run.stdout


def test_a_failing_impl_makes_the_exit_code_the_verdict():
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "--pyargs", "attnspec.suite", "-q", "-p", "no:randomly",
                          "--impl", "tests.examples.fused_qkv:BROKEN", "--attnspec-devices", "cpu",
                          "-k", "output_matches_reference"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout[-3000:]
    assert "breaks output_matches_reference" in run.stdout and "reproduce:" in run.stdout


def test_readme_always_causal_adapter_certifies():
    results = certify(load_impl("tests.examples.causal_fused_qkv:ADAPTER"), max_examples=10)
    bad = [(r.law, r.message) for r in results if r.status in ("fail", "error", "inconclusive")]
    assert not bad, bad
    passed = {r.law for r in results if r.status == "pass"}
    assert {"causal_flag_equals_causal_mask", "causal_flag_hides_the_future", "causal_flag_on_every_path",
            "output_matches_reference"} <= passed
    claimed_nothing = {r.law for r in results if r.status == "not claimed"}
    assert "self_attention_permutation_equivariance" in claimed_nothing  # a causal module is not order-free


def test_readme_always_causal_adapter_with_an_off_by_one_mask_fails_naming_causality():
    results = certify(load_impl("tests.examples.causal_fused_qkv:BROKEN"),
                      laws=["causal_flag_equals_causal_mask", "causal_flag_hides_the_future"])
    assert [r.status for r in results] == ["fail", "fail"], [r.message for r in results]
    assert "is_causal=True" in results[0].message and "causal mask" in results[0].message


def test_readme_rotary_decoder_adapter_certifies_with_rope_and_decoding_laws():
    results = certify(load_impl("tests.examples.rope_decoder:ADAPTER"), max_examples=10)
    bad = [(r.law, r.message) for r in results if r.status in ("fail", "error", "inconclusive")]
    assert not bad, bad
    passed = {r.law for r in results if r.status == "pass"}
    assert {"rope_depends_only_on_relative_position", "rope_at_position_zero_is_plain_attention",
            "decoding_token_by_token_equals_causal_call", "decoding_in_chunks_equals_causal_call",
            "new_cache_starts_an_independent_sequence", "padded_batch_decodes_each_item_alone",
            "output_matches_reference"} <= passed
    assert {r.law: r.status for r in results}["self_attention_permutation_equivariance"] == "not claimed"


def test_readme_rotary_decoder_restarting_positions_fails_naming_decoding():
    results = certify(load_impl("tests.examples.rope_decoder:BROKEN"),
                      laws=["decoding_token_by_token_equals_causal_call"])
    assert results[0].status == "fail", results[0].message
    assert "breaks decoding_token_by_token_equals_causal_call" in results[0].message
