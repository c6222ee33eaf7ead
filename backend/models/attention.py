"""Attention over the paged KV cache, for a batch that mixes prefills and decodes.

Legend: N new tokens in the step, Hq query heads, Hkv KV heads, D head dim, B_d rows attending
through the cache, L longest context among them. The cache of one layer is k_cache/v_cache
[num_slots, Hkv, D] (num_slots = num_blocks * tokens_per_block); a token's slot is
block_table[pos // block] * block + pos % block. The model runner fills AttentionMetadata
once per step; every layer reads it. Where the CPU extension runs, its paged kernel attends every row
(prefill and decode alike) in place; the torch path keeps SDPA for prefills and a gathered copy for decodes.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from backend.models.layers import RMSNorm, apply_rotary
from backend.models.spec import ModelSpec
from kernels.cpu_attention import paged_attention_decode, rotary_write_kv


def torch_rotary_write_kv(q, k, v, cos, sin, k_cache, v_cache, slot_mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch path of kernels.cpu_attention.rotary_write_kv (and its reference): rotary on q and k, then k and v into
    their cache slots. Returns the rotated q and k: whole-prompt SDPA prefills attend over this step's k."""
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k_cache[slot_mapping] = k.to(k_cache.dtype)
    v_cache[slot_mapping] = v.to(v_cache.dtype)
    return q, k


@dataclass
class PrefillChunk:
    start: int                 # first row of this request in the step's N tokens
    num_new: int               # query tokens in this step
    slots: torch.Tensor        # [ctx] cache slots of the whole context so far (cached + new)


@dataclass
class DecodeBatch:
    """Rows with one query each against their request's cache: the decode tokens, and with the CPU paged kernel
    every row of the step (a prefill row attends over the cache up to its own position, written just before)."""
    rows: torch.Tensor                         # [B_d] rows in N
    block_tables: torch.Tensor                 # [B_d, max_blocks] int32, padded with 0
    context_lens: torch.Tensor                 # [B_d] int32, the row's own token included
    use_kernel: bool                           # the CPU paged kernel reads the cache in place
    slots: torch.Tensor | None = None          # [B_d, L] context slots, padded with 0 (torch path only)
    mask: torch.Tensor | None = None           # [B_d, 1, 1, L] True where the slot is real (torch path only)


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor                 # [N] where each new token's K/V go
    decode: DecodeBatch | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        hq, hkv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(spec.hidden_size, hq * d, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(spec.hidden_size, hkv * d, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(spec.hidden_size, hkv * d, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(hq * d, spec.hidden_size, bias=False)
        self.qkv_proj = None                   # q/k/v_proj stacked into one layer, set by fuse_qkv
        self.qkv_sizes = (hq * d, hkv * d, hkv * d)
        if spec.qk_norm == "head":
            self.q_norm, self.k_norm = RMSNorm(d, spec.rms_norm_eps), RMSNorm(d, spec.rms_norm_eps)
        elif spec.qk_norm == "full":
            self.q_norm, self.k_norm = RMSNorm(hq * d, spec.rms_norm_eps), RMSNorm(hkv * d, spec.rms_norm_eps)
        self.scale = d ** -0.5
        self.k_cache = self.v_cache = None     # [slots, Hkv, D], bound by the model runner (bind_cache)
        self.block_size = None                 # tokens per cache block
        self.paged_cache = None                # (k, v) viewed as [num_blocks, block_size, Hkv, D] for the decode kernel
        self.rotary_write_kv = None            # kernels.cpu_attention.rotary_write_kv where the extension runs

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor, block_size: int, use_kernel: bool) -> None:
        """use_kernel: the CPU extension writes new K/V into the cache and attends every row, prefill or decode."""
        self.k_cache, self.v_cache, self.block_size = k_cache, v_cache, block_size
        shape = (-1, block_size, *k_cache.shape[1:])
        self.paged_cache = k_cache.view(shape), v_cache.view(shape)
        self.rotary_write_kv = rotary_write_kv if use_kernel else None

    def fuse_qkv(self, make_linear) -> None:
        """Replaces q/k/v_proj by make_linear(stacked weight, stacked bias): one kernel call per step instead of three."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        bias = torch.cat([p.bias for p in projs]) if projs[0].bias is not None else None
        self.qkv_proj = make_linear(torch.cat([p.weight for p in projs]), bias)
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        s = self.spec
        n = x.shape[0]
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)   # [N, H*D] each
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if s.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        if s.clip_qkv is not None:
            q, k, v = (t.clamp(-s.clip_qkv, s.clip_qkv) for t in (q, k, v))
        q = q.view(n, s.num_heads, s.head_dim)                          # [N, Hq, D]
        k = k.view(n, s.num_kv_heads, s.head_dim)                       # [N, Hkv, D]
        v = v.view(n, s.num_kv_heads, s.head_dim)
        if s.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary_write_kv is not None and q.dtype == torch.float32 and not meta.prefills:   # k, v: cache only
            q = self.rotary_write_kv(q, k, v, cos, sin, self.k_cache, self.v_cache, meta.slot_mapping)
        else:
            q, k = torch_rotary_write_kv(q, k, v, cos, sin, self.k_cache, self.v_cache, meta.slot_mapping)
        if not meta.prefills:                                           # decode-only step: rows are the decode rows
            return self.o_proj(self._decode(q, meta.decode).reshape(n, -1))
        if self.k_cache.dtype != k.dtype:   # a whole-prompt prefill sees K/V as rounded in the cache, like every later step
            k, v = k.to(self.k_cache.dtype).to(k.dtype), v.to(self.v_cache.dtype).to(v.dtype)

        out = torch.empty_like(q)                                       # [N, Hq, D]
        if meta.decode is not None:
            out[meta.decode.rows] = self._decode(q[meta.decode.rows], meta.decode)
        for p in meta.prefills:
            rows = slice(p.start, p.start + p.num_new)
            qp = q[rows].transpose(0, 1).unsqueeze(0)                   # [1, Hq, q, D]
            ctx = p.slots.shape[0]
            if ctx == p.num_new:                                        # whole prompt in this step
                kp = k[rows].transpose(0, 1).unsqueeze(0)               # [1, Hkv, q, D]
                vp = v[rows].transpose(0, 1).unsqueeze(0)
                op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=self.scale, enable_gqa=True)
            else:                                                       # earlier context is in the cache
                kp = self.k_cache[p.slots].transpose(0, 1).unsqueeze(0).to(q.dtype)   # [1, Hkv, ctx, D]
                vp = self.v_cache[p.slots].transpose(0, 1).unsqueeze(0).to(q.dtype)
                q_pos = torch.arange(ctx - p.num_new, ctx)[:, None]
                mask = torch.arange(ctx)[None, :] <= q_pos              # [q, ctx] causal with offset
                op = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=self.scale, enable_gqa=True)
            out[rows] = op.squeeze(0).transpose(0, 1)
        return self.o_proj(out.reshape(n, -1))

    def _decode(self, q: torch.Tensor, d: DecodeBatch) -> torch.Tensor:
        """q [B_d, Hq, D] -> [B_d, Hq, D]: one new token per request against its cached context."""
        if d.use_kernel:
            return paged_attention_decode(q, *self.paged_cache, d.block_tables, d.context_lens, self.scale)
        kd = self.k_cache[d.slots].transpose(1, 2).to(q.dtype)          # [B_d, Hkv, L, D]
        vd = self.v_cache[d.slots].transpose(1, 2).to(q.dtype)
        od = F.scaled_dot_product_attention(q.unsqueeze(2), kd, vd, attn_mask=d.mask, scale=self.scale,
                                            enable_gqa=True)             # [B_d, Hq, 1, D]
        return od.squeeze(2)
