"""A gpt-oss-style attention written by hand: grouped-query heads with biases, a learned sink logit per head that
joins every row's softmax and takes no value, always causal with a look-back window (its YaRN RoPE left out)."""
import torch
from torch import nn

from attnspec import Adapter, Capabilities, from_linears, to_linears
from attnspec.adapter import copy_


class SinkAttention(nn.Module):
    """x (B, T, C) -> (B, T, C); ``sliding_window`` w: token i sees tokens i - w + 1 to i (None: all before it)."""

    def __init__(self, dim, n_heads, n_kv_heads, sliding_window=None):
        super().__init__()
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"dim={dim}, n_heads={n_heads}, n_kv_heads={n_kv_heads}: heads must divide evenly")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.sliding_window = sliding_window
        self.qkv = nn.Linear(dim, dim + 2 * n_kv_heads * self.head_dim)  # rows [q; k; v]
        self.out = nn.Linear(dim, dim)
        self.sinks = nn.Parameter(torch.zeros(n_heads))  # (nh,): each head's sink logit

    def forward(self, x):
        B, T, C = x.shape
        kv = self.n_kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([C, kv, kv], dim=-1)  # (B, T, C), (B, T, kv), (B, T, kv)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        group = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, T, hd)
        scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5  # (B, nh, T, T)
        i, j = torch.arange(T, device=x.device)[:, None], torch.arange(T, device=x.device)[None, :]
        hidden = j > i  # (T, T): causal
        if self.sliding_window is not None:
            hidden = hidden | (j <= i - self.sliding_window)
        scores = scores.masked_fill(hidden, float("-inf"))
        weights = self.softmax_with_sinks(scores)  # (B, nh, T, T): each row sums to less than one
        y = weights @ v  # (B, nh, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C): heads side by side

    def softmax_with_sinks(self, scores):
        """The sink is one more logit in each row's softmax; its column is dropped after: it holds no value."""
        B, nh, T, _ = scores.shape
        sink = self.sinks.to(scores.dtype).view(1, nh, 1, 1).expand(B, nh, T, 1)  # (B, nh, T, 1)
        return torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]  # (B, nh, T, T)


class SinkAdapter(Adapter):
    name = "my-gpt-oss-attention"
    module_class = SinkAttention
    capabilities = Capabilities(
        causality="always", masks_with_causality=(),  # built causal; no masks (the window is its own)
        window_kind="left", grouping="any", attention_sinks=True,  # get_weights returns the sinks
        key_padding_mask_kinds=(), attn_mask_kinds=(), cross_attention=False, layouts=("batch_first",),
        bias_values=(True,), returns_weights=False, kdim_vdim=False, bias_kv=False, zero_attn=False,
        attention_dropout=False)

    def build(self, config, *, dtype, device):
        window = None if config.window is None else config.window[0] + 1  # (left, None): keys i - left to i
        module = self.module_class(config.embed_dim, config.num_heads, config.kv_heads, sliding_window=window)
        return module.to(device=device, dtype=dtype)

    def call(self, module, query, key, value, **flags):
        return module(query), None  # self-attention: query is key is value

    def get_weights(self, m):
        E, Ekv = m.out.weight.shape[0], m.n_kv_heads * m.head_dim
        return from_linears(qkv=m.qkv, out=m.out, split=(E, Ekv, Ekv), sinks=m.sinks)

    def set_weights(self, m, w):
        to_linears(w, qkv=m.qkv, out=m.out)
        copy_(m.sinks, w.sinks)  # to_linears loads the Linears only


ADAPTER = SinkAdapter()


class SinksDropped(SinkAttention):
    """The twin: the sinks forgotten, a plain softmax (each row sums to one again)."""

    def softmax_with_sinks(self, scores):
        return torch.softmax(scores, dim=-1)


class SinksDroppedAdapter(SinkAdapter):
    name = "my-gpt-oss-attention-without-sinks"
    module_class = SinksDropped


BROKEN = SinksDroppedAdapter()
