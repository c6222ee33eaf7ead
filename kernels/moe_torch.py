"""TorchExperts: the routed experts on stock torch CPU ops, for machines where the extension cannot build.

Same interface and quantization as CpuExperts (kernels/cpu_moe.py); the per-expert matmuls are torch's:
fp32 / bf16 F.linear, int8 aten._weight_int8pack_mm and int4 aten._weight_int4pack_mm_for_cpu, both
with bf16 activations (with fp32 activations they are several times slower). int8 scales are therefore
rounded to bf16, and K is padded to a multiple of 16 (torch 2.13's int8 op segfaults otherwise). The loop over experts follows kernels/moe_reference.py.
"""
import torch
import torch.nn.functional as F

from kernels import quantize

TORCH_INT4_GROUPS = (32, 64, 128, 256)   # what _weight_int4pack_mm_for_cpu accepts


class TorchExperts:
    def __init__(self, w13: list, w2: list, shape: tuple[int, int, int], expert_dtype: str, group_size: int):
        self.w13, self.w2 = w13, w2            # per expert: tensors in the op's own format
        self.num_experts, self.hidden_size, self.intermediate_size = shape
        self.expert_dtype = expert_dtype
        self.group_size = group_size
        self.variant = "torch"
        op = {"fp32": "linear", "bf16": "linear", "int8": "_weight_int8pack_mm", "int4": "_weight_int4pack_mm_for_cpu"}
        suffix = f"(g{group_size})" if expert_dtype == "int4" else ""
        self.kernel_name = f"torch/{op[expert_dtype]} {expert_dtype}{suffix}"
        self.nbytes = sum(t.numel() * t.element_size() for w in (w13, w2) for p in w for t in p
                          if isinstance(t, torch.Tensor))

    @classmethod
    def from_weights(cls, w13: torch.Tensor, w2: torch.Tensor, expert_dtype: str = "int8", group_size: int = 32):
        from kernels.cpu_moe import check_expert_weights   # shared validation
        E, H, I = check_expert_weights(w13, w2)
        if expert_dtype == "int4" and group_size not in TORCH_INT4_GROUPS:
            raise ValueError(f"group_size must be one of {TORCH_INT4_GROUPS} for torch int4 experts, got {group_size!r}")
        pack = {"fp32": _pack_fp32, "bf16": _pack_bf16, "int8": _pack_int8, "int4": _pack_int4}.get(expert_dtype)
        if pack is None:
            raise ValueError(f"expert_dtype must be one of {quantize.EXPERT_DTYPES}, got {expert_dtype!r}")
        return cls([pack(w13[e], group_size) for e in range(E)], [pack(w2[e], group_size) for e in range(E)],
                   (E, H, I), expert_dtype, group_size)

    def expert_nbytes(self) -> int:
        return self.nbytes // self.num_experts

    def _linear(self, a: torch.Tensor, packed: tuple, n: int) -> torch.Tensor:
        """a [S, K] @ W.T -> [S, n] fp32."""
        if self.expert_dtype == "fp32":
            return F.linear(a.float(), packed[0])
        if self.expert_dtype == "bf16":
            return F.linear(a.to(torch.bfloat16), packed[0]).float()
        a = F.pad(a.to(torch.bfloat16), (0, packed[-1] - a.shape[1]))      # [S, Kp]
        if self.expert_dtype == "int8":
            return torch.ops.aten._weight_int8pack_mm(a, packed[0], packed[1]).float()
        return torch.ops.aten._weight_int4pack_mm_for_cpu(a, packed[0], self.group_size, packed[1])[:, :n].float()

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        from kernels.cpu_moe import check_routing
        check_routing(x, topk_ids, topk_weights, self.hidden_size)
        T, K = topk_ids.shape
        I = self.intermediate_size
        flat_ids = topk_ids.reshape(-1).to(torch.int64)                     # [T*K]
        bad = (flat_ids < -1) | (flat_ids >= self.num_experts)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"topk_ids[{i // K}, {i % K}] = {int(flat_ids[i])}: expert ids must be in "
                             f"[0, {self.num_experts}) or -1 for a masked slot")
        flat_w = topk_weights.reshape(-1).float()                           # [T*K]
        token_of_slot = torch.arange(T).repeat_interleave(K)                # [T*K]
        out = torch.zeros(T, self.hidden_size, dtype=torch.float32)         # [T, H]
        for e in flat_ids.unique().tolist():
            if e < 0:
                continue
            slots = (flat_ids == e).nonzero().squeeze(1)                    # [S]
            tokens = token_of_slot[slots]                                   # [S]
            h = self._linear(x[tokens], self.w13[e], 2 * I)                 # [S, 2I]
            a = F.silu(h[:, :I]) * h[:, I:]                                 # [S, I]
            y = self._linear(a, self.w2[e], self.hidden_size)               # [S, H]
            out.index_add_(0, tokens, y * flat_w[slots, None])
        return out.to(x.dtype)

    __call__ = forward


def _pack_fp32(w: torch.Tensor, group_size: int) -> tuple:
    return (w.float().contiguous(),)


def _pack_bf16(w: torch.Tensor, group_size: int) -> tuple:
    return (w.to(torch.bfloat16).contiguous(),)


def _pack_int8(w: torch.Tensor, group_size: int) -> tuple:
    q, scale = quantize.quantize_int8(w)                                    # [N, K], [N]
    kp = quantize.round_up(q.shape[1], 16)                                  # the op crashes (SIGSEGV) when K % 16 != 0
    return F.pad(q, (0, kp - q.shape[1])), scale.to(torch.bfloat16), kp


def _pack_int4(w: torch.Tensor, group_size: int) -> tuple:
    q, scale, wmin = quantize.quantize_int4(w, group_size)                  # [N, Kp], [N, Kp/G] x2
    n = quantize.round_up(q.shape[0], 16)                                   # the op wants N % 16 == 0
    u = F.pad(q.to(torch.int32), (0, 0, 0, n - q.shape[0]))                 # [Np, Kp] in [0, 15]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1)
    s = F.pad(scale.float(), (0, 0, 0, n - q.shape[0])).t()                 # [Kp/G, Np]
    m = F.pad(wmin.float(), (0, 0, 0, n - q.shape[0])).t()                  # [Kp/G, Np]
    scale_zeros = torch.stack([s, m + 8 * s], -1).to(torch.bfloat16).contiguous()   # the op: w = (u - 8) s + z
    return packed, scale_zeros, q.shape[1]
