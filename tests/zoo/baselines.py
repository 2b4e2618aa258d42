"""Two baseline test batteries, to measure attnspec against on the same zoo.

Each takes a drop-in class and returns ``(killed, reason)``:

* :func:`shape_only` does what the seed documents do: build the module, call it on
  a few shapes and look at the shapes of what comes back.
* :func:`example_grid` is a careful example-based test: a fixed grid of
  configurations, default initialisation, the state dict copied from a
  ``torch.nn.MultiheadAttention`` built with the same config and seed, outputs and
  weights compared with ``torch.testing.assert_close``.

Any exception raised by the implementation counts as a kill: a crash is a
visible failure in any test battery.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import nn


class Verdict(NamedTuple):
    killed: bool
    reason: str


def killed_by(where: str, exc: Exception) -> Verdict:
    """A crash or a mismatch is a kill: the verdict names where, the exception type and its first line."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Verdict(True, f"{where}: {type(exc).__name__}: {first}")


# ------------------------------------------------------------------ shape-only

# (embed_dim, num_heads, batch_first, query shape, key/value shape): the calls the seed posts make
SHAPE_CALLS = [
    (4, 2, False, (3, 1, 4), (3, 1, 4)),  # the blog's example: 3 tokens, batch 1, self-attention
    (8, 4, True, (2, 5, 8), (2, 5, 8)),  # batch-first self-attention, as ViT-style posts do
    (8, 2, False, (3, 2, 8), (5, 2, 8)),  # cross-attention, L != S
    (4, 2, False, (3, 4), (3, 4)),  # unbatched, as the docs table shows
]


def _expected_shapes(E, batch_first, q_shape, kv_shape):
    if len(q_shape) == 2:
        return q_shape, (q_shape[0], kv_shape[0])  # (L, E), (L, S)
    if batch_first:
        N, L, S = q_shape[0], q_shape[1], kv_shape[1]
    else:
        L, N, S = q_shape[0], q_shape[1], kv_shape[0]
    return q_shape, (N, L, S)


def shape_only(cls) -> Verdict:
    """Construct, call on a few shapes, check the output and weight shapes only."""
    torch.manual_seed(0)
    for E, H, batch_first, q_shape, kv_shape in SHAPE_CALLS:
        where = f"{cls.__name__}({E}, {H}, batch_first={batch_first}) on query {q_shape}, key {kv_shape}"
        try:
            module = cls(E, H, batch_first=batch_first)
            x = torch.rand(q_shape)
            kv = x if kv_shape == q_shape else torch.rand(kv_shape)
            out, w = module(x, kv, kv)
        except Exception as exc:  # a crash is a kill
            return Verdict(True, f"{where} raised {type(exc).__name__}: {exc}")
        want_out, want_w = _expected_shapes(E, batch_first, q_shape, kv_shape)
        if tuple(out.shape) != tuple(want_out):
            return Verdict(True, f"{where}: output shape {tuple(out.shape)}, expected {want_out}")
        if w is None or tuple(w.shape) != tuple(want_w):
            got = None if w is None else tuple(w.shape)
            return Verdict(True, f"{where}: weights shape {got}, expected {want_w}")
    return Verdict(False, f"{len(SHAPE_CALLS)} calls, all shapes as expected")


# ------------------------------------------------------------------ example grid

class GridPoint(NamedTuple):
    B: int
    L: int
    S: int
    E: int
    H: int
    self_attention: bool


GRID = [
    GridPoint(1, 4, 4, 8, 1, True),
    GridPoint(2, 4, 4, 8, 2, True),
    GridPoint(2, 5, 5, 16, 4, True),
    GridPoint(1, 3, 5, 8, 2, False),
    GridPoint(2, 3, 6, 8, 4, False),
    GridPoint(2, 1, 4, 4, 2, False),
]
MASKS = (None, "key_padding_mask", "attn_mask")


def _masks(point: GridPoint, which):
    """A padding mask (trailing keys of sample 1 padded) or a 2-D attn_mask; no row fully masked."""
    B, L, S = point.B, point.L, point.S
    if which == "key_padding_mask":
        kpm = torch.zeros(B, S, dtype=torch.bool)
        kpm[-1, S - max(1, S // 3):] = True  # the last sample is padded at the end
        return dict(key_padding_mask=kpm)
    if which == "attn_mask":
        if point.self_attention:
            return dict(attn_mask=torch.ones(L, S, dtype=torch.bool).triu(1))  # causal
        band = (torch.arange(L)[:, None] - torch.arange(S)[None, :]).abs() > 1  # a local window
        band[:, 0] = False
        return dict(attn_mask=band)
    return {}


def _pair(cls, point: GridPoint):
    """torch's module and ``cls``'s, both built under seed 0, with torch's state dict copied over."""
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(point.E, point.H)
    torch.manual_seed(0)
    mod = cls(point.E, point.H)
    mod.load_state_dict(ref.state_dict())
    ref.eval()
    mod.eval()
    return ref, mod


def example_grid(cls) -> Verdict:
    """Fixed grid x masks x need_weights: outputs and weights against torch with assert_close."""
    cases = 0
    for point in GRID:
        gen = torch.Generator().manual_seed(1)
        q = torch.randn(point.L, point.B, point.E, generator=gen)  # (L, N, E)
        k = q if point.self_attention else torch.randn(point.S, point.B, point.E, generator=gen)
        v = q if point.self_attention else torch.randn(point.S, point.B, point.E, generator=gen)
        for which in MASKS:
            for need_weights in (True, False):
                where = f"{point} masks={which} need_weights={need_weights}"
                try:
                    ref, mod = _pair(cls, point)
                    kwargs = dict(_masks(point, which), need_weights=need_weights)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        want, want_w = ref(q, k, v, **kwargs)
                    got, got_w = mod(q, k, v, **kwargs)
                    torch.testing.assert_close(got, want)
                    if need_weights:
                        torch.testing.assert_close(got_w, want_w)
                    elif got_w is not None:
                        return Verdict(True, f"{where}: weights returned with need_weights=False")
                except Exception as exc:  # a crash or a mismatch is a kill
                    return killed_by(where, exc)
                cases += 1
    return Verdict(False, f"{cases} cases agree with torch")


BASELINES = {"shape-only": shape_only, "example grid": example_grid}


# ------------------------------------------------------------------ the same two batteries for the features of
# tests/zoo/features.py (a causal flag of either alignment, num_kv_heads, a sliding window): ModernAttention's API

FEATURE_SHAPE_CALLS = [  # (embed_dim, num_heads, num_kv_heads, window, is_causal, query (N, L, E), keys (N, S, E))
    (8, 4, 2, None, True, (2, 5, 8), (2, 5, 8)),  # a GQA decoder block
    (8, 4, 1, (2, 0), True, (1, 4, 8), (1, 4, 8)),  # MQA with a Mistral-style window
    (8, 2, 2, None, False, (2, 3, 8), (2, 5, 8)),  # cross-attention, L != S
    (8, 2, 1, (1, 1), False, (3, 8), (3, 8)),  # unbatched
]


def feature_shape_only(cls, alignment: str = "top-left") -> Verdict:
    """Construct with the new arguments, call on a few shapes, check the output and weight shapes only."""
    torch.manual_seed(0)
    for E, H, Hkv, window, causal, q_shape, kv_shape in FEATURE_SHAPE_CALLS:
        where = f"{cls.__name__}({E}, {H}, num_kv_heads={Hkv}, window={window}) on {q_shape}, {kv_shape}"
        try:
            module = cls(E, H, num_kv_heads=Hkv, window=window, causal_alignment=alignment)
            x = torch.rand(q_shape)
            kv = x if kv_shape == q_shape else torch.rand(kv_shape)
            out, w = module(x, kv, kv, is_causal=causal, need_weights=True)
        except Exception as exc:  # a crash is a kill
            return Verdict(True, f"{where} raised {type(exc).__name__}: {exc}")
        want_w = (q_shape[0], kv_shape[0]) if len(q_shape) == 2 else (q_shape[0], q_shape[1], kv_shape[1])
        if tuple(out.shape) != tuple(q_shape):
            return Verdict(True, f"{where}: output shape {tuple(out.shape)}, expected {q_shape}")
        if w is None or tuple(w.shape) != want_w:
            return Verdict(True, f"{where}: weights shape {None if w is None else tuple(w.shape)}, expected {want_w}")
    return Verdict(False, f"{len(FEATURE_SHAPE_CALLS)} calls, all shapes as expected")


def _hidden(L, S, is_causal, window, alignment):
    """The keys each query may not see, bool (L, S), written out as a careful tester would."""
    offset = 0 if alignment == "top-left" else S - L
    i = torch.arange(L)[:, None] + offset
    j = torch.arange(S)[None, :]
    hidden = (j > i) if is_causal else torch.zeros(L, S, dtype=torch.bool)
    if window is not None:
        left, right = window
        hidden = hidden | (j < i - left) if left is not None else hidden
        hidden = hidden | (j > i + right) if right is not None else hidden
    return hidden


def _expected(module, q, kv, hidden, kpm, need_weights):
    """SDPA (enable_gqa) on the module's own projections, and the weights by an explicit softmax."""
    B, L, E = q.shape
    S, H, Hkv = kv.shape[1], module.num_heads, module.num_kv_heads
    hd = E // H
    qh = module.q_proj(q).view(B, L, H, hd).transpose(1, 2)  # (B, H, L, hd)
    kh = module.k_proj(kv).view(B, S, Hkv, hd).transpose(1, 2)  # (B, Hkv, S, hd)
    vh = module.v_proj(kv).view(B, S, Hkv, hd).transpose(1, 2)  # (B, Hkv, S, hd)
    masked = hidden[None, None] | (kpm[:, None, None, :] if kpm is not None else False)  # (B, 1, L, S)
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=~masked, enable_gqa=True)
    out = module.o_proj(out.transpose(1, 2).reshape(B, L, E))  # (B, L, E)
    if not need_weights:
        return out, None
    logits = (qh @ kh.repeat_interleave(H // Hkv, dim=1).transpose(-2, -1)) * hd ** -0.5  # (B, H, L, S)
    return out, torch.softmax(logits.masked_fill(masked, float("-inf")), dim=-1).mean(1)  # (B, L, S)


def feature_example_grid(cls, alignment: str = "top-left") -> Verdict:
    """The grid x num_kv_heads {H, 1} x is_causal x window {None, (2, 0)} x padding x need_weights, against SDPA."""
    cases = 0
    for point in GRID:
        gen = torch.Generator().manual_seed(1)
        q = torch.randn(point.B, point.L, point.E, generator=gen)  # (N, L, E)
        kv = q if point.self_attention else torch.randn(point.B, point.S, point.E, generator=gen)
        for Hkv in sorted({point.H, 1}):
            for is_causal in (False, True):
                for window in (None, (2, 0)):
                    for which in (None, "key_padding_mask"):
                        for need_weights in (True, False):
                            where = f"{point} num_kv_heads={Hkv} is_causal={is_causal} window={window} masks={which}"
                            try:
                                torch.manual_seed(0)
                                module = cls(point.E, point.H, num_kv_heads=Hkv, window=window,
                                             causal_alignment=alignment).eval()
                                kpm = _masks(point, which).get("key_padding_mask")
                                hidden = _hidden(point.L, point.S, is_causal, window, alignment)
                                got, got_w = module(q, kv, kv, key_padding_mask=kpm, is_causal=is_causal,
                                                    need_weights=need_weights)
                                want, want_w = _expected(module, q, kv, hidden, kpm, need_weights)
                                torch.testing.assert_close(got, want)
                                if need_weights:
                                    torch.testing.assert_close(got_w, want_w)
                            except Exception as exc:  # a crash or a mismatch is a kill
                                return killed_by(where, exc)
                            cases += 1
    return Verdict(False, f"{cases} cases agree with SDPA")


FEATURE_BASELINES = {"shape-only": feature_shape_only, "example grid": feature_example_grid}


# ------------------------------------------------------------------ the same two batteries for the decoder zoo of
# tests/zoo/decoding.py (RoPE and a key/value cache): ModernAttention's API with ``rope=``, ``new_cache``, ``decode``

DECODING_SHAPE_CALLS = [  # (embed_dim, num_heads, num_kv_heads, batch, prompt, new tokens)
    (16, 2, 2, 2, 5, 3),  # a decoder block: prompt of 5, then 3 tokens
    (16, 4, 1, 1, 3, 2),  # multi-query
]


def decoding_shape_only(cls, rope) -> Verdict:
    """Build with RoPE, call on a prompt, decode a few tokens through the cache, check the shapes only."""
    torch.manual_seed(0)
    for E, H, Hkv, B, P, T in DECODING_SHAPE_CALLS:
        where = f"{cls.__name__}({E}, {H}, num_kv_heads={Hkv}, rope={rope.short()}) prompt {P} then {T} tokens"
        try:
            module = cls(E, H, num_kv_heads=Hkv, rope=rope, causal_alignment="bottom-right")
            x = torch.rand(B, P + T, E)
            out, _ = module(x, x, x, is_causal=True, positions=torch.arange(P + T))
            cache = module.new_cache(B, P + T)
            steps = [module.decode(x[:, :P], cache, torch.arange(P).expand(B, P))]
            steps += [module.decode(x[:, t:t + 1], cache, torch.full((B, 1), t)) for t in range(P, P + T)]
        except Exception as exc:  # a crash is a kill
            return Verdict(True, f"{where} raised {type(exc).__name__}: {exc}")
        if tuple(out.shape) != (B, P + T, E) or [tuple(s.shape) for s in steps] != [(B, P, E)] + [(B, 1, E)] * T:
            return Verdict(True, f"{where}: shapes {tuple(out.shape)}, {[tuple(s.shape) for s in steps]}")
    return Verdict(False, f"{len(DECODING_SHAPE_CALLS)} prompts decoded, all shapes as expected")


def _tester_rope(x, positions, rope):
    """RoPE written out by a careful tester from the declared convention: x (B, h, T, hd), positions (T,)."""
    hd = x.shape[-1]
    r = int(hd * rope.fraction)
    freqs = positions[:, None].double() * rope.base ** (-torch.arange(0, r, 2).double() / r)  # (T, r/2)
    cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
    if rope.pairing == "rotate_half":
        x1, x2 = x[..., : r // 2], x[..., r // 2: r]
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (B, h, T, r)
    else:
        x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
        rotated = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)  # (B, h, T, r)
    return torch.cat([rotated, x[..., r:]], dim=-1)  # (B, h, T, hd)


DECODING_GRID = [  # (batch, sequence, embed_dim, num_heads, num_kv_heads)
    (1, 6, 16, 2, 2), (2, 5, 16, 4, 1), (2, 7, 32, 4, 2),
]


def decoding_example_grid(cls, rope) -> Verdict:
    """A fixed grid x prefill {all, half, 1} then single tokens: the causal forward against SDPA with the
    tester's RoPE on the module's own projections, and decoding against the module's own forward."""
    cases = 0
    for B, L, E, H, Hkv in DECODING_GRID:
        for prefill in sorted({L, L // 2, 1}):
            where = f"B={B} L={L} E={E} H={H} num_kv_heads={Hkv} prefill {prefill}"
            try:
                torch.manual_seed(0)
                module = cls(E, H, num_kv_heads=Hkv, rope=rope, causal_alignment="bottom-right").eval()
                x = torch.randn(B, L, E, generator=torch.Generator().manual_seed(1))
                pos = torch.arange(L)
                with torch.no_grad():
                    full, _ = module(x, x, x, is_causal=True, positions=pos, key_positions=pos)
                    hd = E // H
                    q = _tester_rope(module.q_proj(x).view(B, L, H, hd).transpose(1, 2), pos, rope)  # (B, H, L, hd)
                    k = _tester_rope(module.k_proj(x).view(B, L, Hkv, hd).transpose(1, 2), pos, rope)
                    v = module.v_proj(x).view(B, L, Hkv, hd).transpose(1, 2)  # (B, Hkv, L, hd)
                    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    want = module.o_proj(want.transpose(1, 2).reshape(B, L, E))  # (B, L, E)
                    torch.testing.assert_close(full, want)
                    cache = module.new_cache(B, L)
                    outs = [module.decode(x[:, :prefill], cache, pos[:prefill].expand(B, prefill))]
                    outs += [module.decode(x[:, t:t + 1], cache, pos[t:t + 1].expand(B, 1)) for t in range(prefill, L)]
                    torch.testing.assert_close(torch.cat(outs, dim=1), full)
            except Exception as exc:  # a crash or a mismatch is a kill
                return killed_by(where, exc)
            cases += 1
    return Verdict(False, f"{cases} cases agree")


DECODING_BASELINES = {"shape-only": decoding_shape_only, "example grid": decoding_example_grid}


# ================================================================== kernels (tests/zoo/kernels.py)

def kernel_shape_only(kernel) -> Verdict:
    """Call the kernel on two shapes (grouped heads, causal, the LSE asked for); look at the shapes only."""
    gen = torch.Generator().manual_seed(0)
    for B, Lq, Lk, Hq, Hkv, D in ((2, 5, 7, 4, 2, 16), (1, 3, 3, 2, 2, 8)):
        where = f"attn on q {(B, Lq, Hq, D)}, k/v {(B, Lk, Hkv, D)}, causal, return_lse"
        q = torch.randn(B, Lq, Hq, D, generator=gen)
        k, v = torch.randn(B, Lk, Hkv, D, generator=gen), torch.randn(B, Lk, Hkv, D, generator=gen)
        try:
            out, lse = kernel(q, k, v, causal=True, return_lse=True)
        except Exception as exc:  # a crash is a kill
            return killed_by(where, exc)
        if tuple(out.shape) != (B, Lq, Hq, D) or tuple(lse.shape) != (B, Hq, Lq):
            return Verdict(True, f"{where}: output {tuple(out.shape)}, lse {tuple(lse.shape)}")
    return Verdict(False, "2 calls, all shapes as expected")


# FlashAttention 2's test_flash_attn_output grid, cut to what two CPU cores run in seconds per kernel: its
# seqlen pairs (113, 203) and (108, 256), d in {32, 59}, causal, local (a random window), alibi, softcap
# {0, 50} (q scaled by softcap / 4 so that the cap bites), mha and gqa; bfloat16, batch 2, 4 heads.
FA_SEQLENS = ((113, 203), (108, 256))
FA_DIMS = (32, 59)


def _fa_reference(q, k, v, *, causal, window, softcap, slopes, upcast=True, reorder_ops=False):
    """FlashAttention's attention_ref, written out: scores, softcap, ALiBi, the window/causal mask
    (bottom-right), softmax (a row with no key gives 0), then the values. In float32 (upcast) or q's dtype."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    B, Lq, Hq, D = q.shape
    Lk, G = k.shape[1], Hq // k.shape[2]
    k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)  # (B, Lk, Hq, ·)
    if reorder_ops:
        scores = torch.einsum("bthd,bshd->bhts", q, k / D ** 0.5)
    else:
        scores = torch.einsum("bthd,bshd->bhts", q / D ** 0.5, k)  # (B, Hq, Lq, Lk)
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    row = torch.arange(Lq)[:, None] + Lk - Lq  # (Lq, 1): each query's key position
    col = torch.arange(Lk)[None, :]
    if slopes is not None:
        scores = scores - slopes.to(scores.dtype)[None, :, None, None] * (row - col).abs()
    left, right = window
    right = 0 if causal else right
    hidden = torch.zeros(Lq, Lk, dtype=torch.bool)
    if left >= 0:
        hidden |= col < row - left
    if right >= 0:
        hidden |= col > row + right
    scores = scores.masked_fill(hidden, float("-inf"))
    attention = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a fully masked row: 0
    return torch.einsum("bhts,bshd->bthd", attention, v).to(dtype)


def kernel_fa_grid(kernel) -> Verdict:
    """FA2's rule on the grid above: max |out - ref| <= 2 max |out_pt - ref| (+1e-5), and the same for dq, dk, dv
    with 2x (out_pt: the same maths in bfloat16, ops reordered). The LSE is returned but never compared, as in FA2."""
    import itertools
    dtype, B, Hq = torch.bfloat16, 2, 4
    for (Lq, Lk), D, causal, local, alibi, softcap, mha in itertools.product(
            FA_SEQLENS, FA_DIMS, (False, True), (False, True), (False, True), (0.0, 50.0), ("mha", "gqa")):
        gen = torch.Generator().manual_seed(0)
        Hkv = Hq if mha == "mha" else 2
        q = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
        if softcap > 0:
            q = (q.float() * softcap / 4).to(dtype)
        k = torch.randn(B, Lk, Hkv, D, generator=gen).to(dtype)
        v = torch.randn(B, Lk, Hkv, D, generator=gen).to(dtype)
        window = tuple(int(x) for x in torch.randint(0, Lk, (2,), generator=gen)) if local else (-1, -1)
        slopes = torch.rand(Hq, generator=gen) * 0.3 if alibi else None
        where = f"FA grid (Lq={Lq}, Lk={Lk}, d={D}, causal={causal}, window={window}, alibi={alibi}, softcap={softcap}, {mha})"
        options = dict(causal=causal, window_size=window, softcap=softcap, alibi_slopes=slopes)
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        dout = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
        try:
            out = kernel(*leaves, **options)
            out.backward(dout)
        except Exception as exc:
            return killed_by(where, exc)
        refs = {}
        for name, kwargs in (("ref", {}), ("pt", dict(upcast=False, reorder_ops=True))):
            ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            ref = _fa_reference(*ref_leaves, causal=causal, window=window, softcap=softcap, slopes=slopes, **kwargs)
            ref.backward(dout)
            refs[name] = (ref.detach(), *[t.grad for t in ref_leaves])
        got = (out.detach(), *[t.grad for t in leaves])
        for i, what in enumerate(("out", "dq", "dk", "dv")):
            if got[i] is None:
                return Verdict(True, f"{where}: {what} is None")
            err = (got[i].float() - refs["ref"][i].float()).abs().max().item()
            base = (refs["pt"][i].float() - refs["ref"][i].float()).abs().max().item()
            if not err <= 2 * base + 1e-5:
                return Verdict(True, f"{where}: max |{what} - ref| = {err:.3g} > 2 x {base:.3g}")
    return Verdict(False, "every grid point within FA2's bound")


KERNEL_BASELINES = {"shape-only": kernel_shape_only, "FA2 grid": kernel_fa_grid}
