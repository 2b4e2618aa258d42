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


# ================================================================== varlen and the cache step (tests/zoo/varlen.py)

def varlen_shape_only(fn, entry: str, caps) -> Verdict:
    """Call the varlen function (or the cache step) on two shapes, with the LSE asked for; look at the shapes only."""
    gen = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    for lengths, Hq, Hkv, D in (((3, 5), 4, 2, 16), ((2,), 2, 2, 8)):
        B = len(lengths)
        try:
            if entry == "varlen":
                T = sum(lengths)
                cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
                where = f"attn_varlen on segments {lengths}, {Hq}/{Hkv} heads, causal, return_lse"
                out, lse = fn(r(T, Hq, D), r(T, Hkv, D), r(T, Hkv, D), cu, cu, max(lengths), max(lengths),
                              causal=True, return_lse=True)
                want = ((T, Hq, D), (Hq, T) if caps.lse_layout == "BHL" else (T, Hq))
            else:
                where = f"the cache step on cache lengths {lengths}, one new row, {Hq}/{Hkv} heads, causal, return_lse"
                S = max(lengths) + 1
                k_cache, v_cache = r(B, S, Hkv, D), r(B, S, Hkv, D)
                options = dict(cache_seqlens=torch.tensor(lengths, dtype=torch.int32), causal=True, return_lse=True)
                if not caps.contiguous_cache:  # paged only: one page per item
                    options["block_table"] = torch.arange(B, dtype=torch.int32)[:, None]
                out, lse = fn(r(B, 1, Hq, D), k_cache, v_cache, k=r(B, 1, Hkv, D), v=r(B, 1, Hkv, D), **options)
                want = ((B, 1, Hq, D), (B, Hq, 1) if caps.lse_layout == "BHL" else (B, 1, Hq))
        except Exception as exc:  # a crash is a kill
            return killed_by(where, exc)
        if (tuple(out.shape), tuple(lse.shape)) != want:
            return Verdict(True, f"{where}: output {tuple(out.shape)}, lse {tuple(lse.shape)}")
    return Verdict(False, "2 calls, all shapes as expected")


def _fa_rule(got, ref, pt, mult: float) -> tuple:
    """FlashAttention's assertion: max |got - ref| <= mult x max |pt - ref| + 1e-5; (ok, error, baseline)."""
    err = (got.float() - ref.float()).abs().max().item() if got.numel() else 0.0
    base = (pt.float() - ref.float()).abs().max().item() if got.numel() else 0.0
    return err <= mult * base + 1e-5, err, base


# FlashAttention 2's test_flash_attn_varlen_output, cut to two CPU cores: seqlens (113, 203) and (108, 256), keys and
# queries padded at random to between 20 fewer and the full length (FA's generate_random_padding_mask), 3 sequences,
# d in {32, 59}, causal, local, ALiBi, softcap {0, 50}, mha and gqa, bfloat16; out, dq, dk, dv within 2x the
# same-dtype reference's error (+1e-5), as FA2 asserts; the LSE returned but never compared.
def _varlen_grid(fn, caps) -> Verdict:
    import itertools
    dtype, B, Hq = torch.bfloat16, 3, 4
    for (Lq, Lk), D, causal, local, alibi, softcap, mha in itertools.product(
            FA_SEQLENS, FA_DIMS, (False, True), (False, True), (False, True), (0.0, 50.0), ("mha", "gqa")):
        gen = torch.Generator().manual_seed(0)
        Hkv = Hq if mha == "mha" else 2
        lq = torch.randint(max(1, Lq - 20), Lq + 1, (B,), generator=gen).tolist()
        lk = torch.randint(max(1, Lk - 20), Lk + 1, (B,), generator=gen).tolist()
        q = torch.randn(sum(lq), Hq, D, generator=gen).to(dtype)
        if softcap > 0:
            q = (q.float() * softcap / 4).to(dtype)
        k, v = (torch.randn(sum(lk), Hkv, D, generator=gen).to(dtype) for _ in range(2))
        window = tuple(int(x) for x in torch.randint(0, Lk, (2,), generator=gen)) if local else (-1, -1)
        slopes = torch.rand(Hq, generator=gen) * 0.3 if alibi else None
        dout = torch.randn(sum(lq), Hq, D, generator=gen).to(dtype)
        cu = lambda xs: torch.tensor([0, *torch.tensor(xs).cumsum(0).tolist()], dtype=torch.int32)  # noqa: E731
        where = f"FA varlen grid (Lq={Lq}, Lk={Lk}, d={D}, causal={causal}, window={window}, alibi={alibi}, " \
                f"softcap={softcap}, {mha})"
        if (local and not caps.window) or (alibi and not caps.alibi) or (softcap and not caps.softcap):
            continue  # a grid point the kernel does not claim
        options = dict(causal=causal, **({"window_size": window} if local else {}),
                       **({"softcap": softcap} if softcap else {}), **({"alibi_slopes": slopes} if alibi else {}))
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        try:
            out = fn(*leaves, cu(lq), cu(lk), max(lq), max(lk), **options)
            out.backward(dout)
        except Exception as exc:
            return killed_by(where, exc)
        got = [out.detach()] + [t.grad for t in leaves]
        refs = {}
        for name, kwargs in (("ref", {}), ("pt", dict(upcast=False, reorder_ops=True))):
            ref_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            outs, q0, k0 = [], 0, 0
            for a, b in zip(lq, lk):  # each sequence as FA's padded reference sees it
                outs.append(_fa_reference(ref_leaves[0][q0:q0 + a][None], ref_leaves[1][k0:k0 + b][None],
                                          ref_leaves[2][k0:k0 + b][None], causal=causal, window=window,
                                          softcap=softcap, slopes=slopes, **kwargs)[0])
                q0, k0 = q0 + a, k0 + b
            ref = torch.cat(outs)
            ref.backward(dout)
            refs[name] = [ref.detach()] + [t.grad for t in ref_leaves]
        for i, what in enumerate(("out", "dq", "dk", "dv")):
            if got[i] is None:
                return Verdict(True, f"{where}: {what} is None")
            ok, err, base = _fa_rule(got[i], refs["ref"][i], refs["pt"][i], 2)
            if not ok:
                return Verdict(True, f"{where}: max |{what} - ref| = {err:.3g} > 2 x {base:.3g}")
    return Verdict(False, "every grid point within FA2's bound")


def _rotated(x, cos, sin, positions, interleaved: bool):
    """FA's apply_rotary_emb, written out: x (B, L, H, D), its first 2 * cos.shape[1] features turned at positions (B, L)."""
    r = 2 * cos.shape[1]
    c, s = cos[positions][:, :, None].float(), sin[positions][:, :, None].float()  # (B, L, 1, r/2)
    rot = x[..., :r].float()
    if interleaved:
        a, b = rot[..., 0::2], rot[..., 1::2]
        turned = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    else:
        a, b = rot[..., : r // 2], rot[..., r // 2:]
        turned = torch.cat([a * c - b * s, a * s + b * c], dim=-1)
    return torch.cat([turned.to(x.dtype), x[..., r:]], dim=-1)


# FlashAttention 2's test_flash_attn_kvcache, cut to two CPU cores: new_kv, causal, local, rotary fraction {0, 0.5, 1}
# (rotary_dim a multiple of 16, as FA takes it), paged (pages of 256, FA's size, in a random order) or not, and
# cache_batch_idx or not, in full; ALiBi, num_splits {1, 0}, mha/gqa and rotary_interleaved taking turns; (seqlen_q,
# seqlen_k) in (1, 128), (3, 339), (16, 80) by turns; batch 2 (5 cache rows with cache_batch_idx), 4 heads, d = 59,
# bfloat16. The output within 3x (5x with ALiBi) the same-dtype reference's error (+1e-5), as FA2 asserts; the values
# written to the cache equal, the keys equal (within 1e-3 under rotary). The queries turn as the kernel declares.
def _kvcache_grid(fn, caps) -> Verdict:
    import itertools
    dtype, B, Hq, D = torch.bfloat16, 2, 4, 59
    pairs = ((1, 128), (3, 339), (16, 80))
    grid = itertools.product((False, True), (False, True), (False, True), (0.0, 0.5, 1.0), (None, 256), (False, True))
    for i, (new_kv, causal, local, fraction, page, batch_idx) in enumerate(grid):
        alibi, splits, gqa, interleaved = i % 3 == 1, (1, 0)[i % 2], i % 4 >= 2, (i // 2) % 2 == 0
        if (page is None and not caps.contiguous_cache) or (page is not None and not caps.paged) or \
                (batch_idx and not caps.cache_batch_idx) or (page is not None and batch_idx) or \
                (local and not caps.window) or (alibi and not caps.alibi) or (new_kv and not caps.new_kv):
            continue  # a grid point the kernel does not claim (FA2 takes cache_batch_idx without pages only)
        Lq, Lk = pairs[i % 3]
        rotary_dim = int(fraction * D) // 16 * 16
        if rotary_dim and not caps.rotary:
            continue
        gen = torch.Generator().manual_seed(i)
        Hkv = 2 if gqa else Hq
        Ln = Lq if new_kv else 0
        B_cache = 5 if batch_idx else B
        q = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
        k_cache, v_cache = (torch.randn(B_cache, Lk, Hkv, D, generator=gen).to(dtype) for _ in range(2))
        k_new, v_new = (torch.randn(B, Ln, Hkv, D, generator=gen).to(dtype) for _ in range(2))
        reach = Ln if new_kv else 0
        lengths = torch.randint(0, Lk - reach + 1, (B,), generator=gen).to(torch.int32)
        idx = torch.randperm(B_cache, generator=gen)[:B].to(torch.int32) if batch_idx else None
        window = tuple(int(x) for x in torch.randint(0, Lk, (2,), generator=gen)) if local else (-1, -1)
        slopes = torch.rand(Hq, generator=gen) * 0.3 if alibi else None
        angles = torch.arange(Lk + Lq)[:, None] * 10000.0 ** (-torch.arange(0, rotary_dim, 2) / max(rotary_dim, 1))
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        rows = idx.long() if idx is not None else torch.arange(B)
        before_k, before_v = k_cache[rows].clone(), v_cache[rows].clone()  # (B, Lk, Hkv, D): each item's rows
        options = dict(cache_seqlens=lengths, causal=causal)
        options.update({"window_size": window} if local else {}, **({"alibi_slopes": slopes} if alibi else {}))
        if caps.num_splits:
            options["num_splits"] = splits
        if idx is not None:
            options["cache_batch_idx"] = idx
        if rotary_dim:
            options.update(rotary_cos=cos, rotary_sin=sin, rotary_interleaved=interleaved)
        if new_kv:
            options.update(k=k_new, v=v_new)
        pool_k, pool_v = k_cache, v_cache
        if page is not None:  # FA's paged cache: pages of 256 rows in a random order
            P = -(-Lk // page)
            order = torch.randperm(B * P, generator=gen)
            table = order.view(B, P).to(torch.int32)
            pool_k, pool_v = (torch.zeros(B * P, page, Hkv, D, dtype=dtype) for _ in range(2))
            for t, pool in ((k_cache, pool_k), (v_cache, pool_v)):
                padded = torch.cat([t, t.new_zeros(B, P * page - Lk, Hkv, D)], dim=1)
                pool[order] = padded.view(B * P, page, Hkv, D)
            options["block_table"] = table
        where = (f"FA kvcache grid (Lq={Lq}, Lk={Lk}, new_kv={new_kv}, causal={causal}, window={window}, alibi={alibi}, "
                 f"rotary_dim={rotary_dim}{' interleaved' if interleaved else ''}, paged={page}, batch_idx={batch_idx})")
        try:
            out = fn(q, pool_k, pool_v, **options)
        except Exception as exc:
            return killed_by(where, exc)
        after_k = pool_k[table.long()].flatten(1, 2)[:, :Lk] if page else pool_k[rows]
        after_v = pool_v[table.long()].flatten(1, 2)[:, :Lk] if page else pool_v[rows]
        flash_queries = caps.rotary_queries == "flash-attn" and not causal and not local
        outs = {"ref": [], "pt": []}
        for b in range(B):
            n = int(lengths[b])
            kb, vb, qb = before_k[b:b + 1, :n], before_v[b:b + 1, :n], q[b:b + 1]
            if rotary_dim:
                qpos = torch.full((1, Lq), n) if flash_queries else torch.arange(Lq)[None] + n
                qb = _rotated(qb, cos, sin, qpos, interleaved)
            if new_kv:
                kn = _rotated(k_new[b:b + 1], cos, sin, torch.arange(Ln)[None] + n, interleaved) if rotary_dim \
                    else k_new[b:b + 1]
                if not torch.equal(after_v[b, n:n + Ln], v_new[b]) or not (
                        torch.equal(after_k[b, n:n + Ln], kn[0]) if not rotary_dim
                        else torch.allclose(after_k[b, n:n + Ln].float(), kn[0].float(), rtol=1e-3, atol=1e-3)):
                    return Verdict(True, f"{where}: the cache rows written for item {b} differ from the new rows")
                kb, vb = torch.cat([kb, kn], dim=1), torch.cat([vb, v_new[b:b + 1]], dim=1)
            for name, kwargs in (("ref", {}), ("pt", dict(upcast=False, reorder_ops=True))):
                outs[name].append(_fa_reference(qb, kb, vb, causal=causal, window=window, softcap=0.0, slopes=slopes,
                                                **kwargs))
        ok, err, base = _fa_rule(out, torch.cat(outs["ref"]), torch.cat(outs["pt"]), 5 if alibi else 3)
        if not ok:
            return Verdict(True, f"{where}: max |out - ref| = {err:.3g} > {5 if alibi else 3} x {base:.3g}")
    return Verdict(False, "every grid point within FA2's bound, every cache row written as expected")


def varlen_fa_grid(fn, entry: str, caps) -> Verdict:
    """FlashAttention 2's grid for the entry point: test_flash_attn_varlen_output's or test_flash_attn_kvcache's."""
    return _varlen_grid(fn, caps) if entry == "varlen" else _kvcache_grid(fn, caps)


VARLEN_BASELINES = {"shape-only": varlen_shape_only, "FA2 grid": varlen_fa_grid}
