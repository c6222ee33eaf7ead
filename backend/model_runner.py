"""ModelRunner: owns the model and the KV cache tensors; turns a scheduled batch into input
tensors (input ids, positions, slot mapping, per-request context slots), runs the forward pass,
and samples one token for every request whose step reaches its last known token."""
import logging

import psutil
import torch

from backend.config import EngineConfig
from backend.models.attention import AttentionMetadata, DecodeBatch, PrefillChunk
from backend.models.placement import ComputeThreads
from backend.models.spec import ModelSpec
from backend.sampler import sample, torch_argmax
from backend.scheduler import ScheduledBatch
from kernels import cpu_attention
from kernels.cpu_argmax import argmax_rows

log = logging.getLogger(__name__)


def kv_cache_num_blocks(config: EngineConfig, spec: ModelSpec, dtype: torch.dtype, max_seq_len: int) -> tuple[int, str]:
    """Blocks in the paged KV cache and a note on where the number came from."""
    bytes_per_token = spec.kv_bytes_per_token * torch.finfo(dtype).bits // 8
    if config.max_tokens_in_paged_kv_cache is not None:
        blocks = -(-config.max_tokens_in_paged_kv_cache // config.tokens_per_block)
        return blocks, f"max_tokens_in_paged_kv_cache={config.max_tokens_in_paged_kv_cache}"
    avail = psutil.virtual_memory().available
    tokens = int(avail * config.kv_cache_free_mem_fraction) // bytes_per_token
    # More than every slot at full length could ever use would only waste memory.
    tokens = min(tokens, config.max_batch_size * max_seq_len)
    return max(1, tokens // config.tokens_per_block), (
        f"kv_cache_free_mem_fraction={config.kv_cache_free_mem_fraction} of {avail / 2**30:.1f} GiB available,"
        f" capped at max_batch_size x max_seq_len")


class ModelRunner:
    def __init__(self, config: EngineConfig, model, spec: ModelSpec, num_blocks: int, dtype: torch.dtype,
                 threads: ComputeThreads):
        self.config = config
        self.threads = threads
        self.model = model
        self.spec = spec
        self.block_size = config.tokens_per_block
        slots = num_blocks * self.block_size
        shape = (spec.num_layers, slots, spec.num_kv_heads, spec.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype)     # [layers, slots, Hkv, D]
        self.v_cache = torch.zeros(shape, dtype=dtype)
        # Decode attention reads the cache in place when the CPU extension is built; torch gathers otherwise.
        self.use_paged_kernel = dtype in (torch.float32, torch.bfloat16) and cpu_attention.available()
        self.argmax = argmax_rows if cpu_attention.available() else torch_argmax   # greedy rows, same answer
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.bind_cache(self.k_cache[i], self.v_cache[i], self.block_size, self.use_paged_kernel)
        self.kv_cache_bytes = 2 * self.k_cache.numel() * self.k_cache.element_size()

    def _slots(self, block_table: list[int], start: int, end: int) -> list[int]:
        """Cache slots of positions start..end-1, as Python ints: a decode row is one slot, not 4 torch calls."""
        bs = self.block_size
        return [block_table[p // bs] * bs + p % bs for p in range(start, end)]

    def prepare(self, batch: ScheduledBatch):
        input_ids, positions, slot_mapping = [], [], []
        decode_rows, decode_groups, context_lens, prefills, logits_rows, sample_seqs = [], [], [], [], [], []
        row = 0
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slot_mapping.extend(self._slots(seq.block_table, start, end))
            if self.use_paged_kernel or (n == 1 and start > 0):
                decode_rows.extend(range(row, row + n))
                decode_groups.append((seq, n))
                context_lens.extend(range(start + 1, end + 1))
            else:
                prefills.append(PrefillChunk(row, n, torch.tensor(self._slots(seq.block_table, 0, end), dtype=torch.long)))
            row += n
            if end == seq.num_tokens:                    # this step reaches the newest token: sample
                logits_rows.append(row - 1)
                sample_seqs.append(seq)
        meta = AttentionMetadata(slot_mapping=torch.tensor(slot_mapping, dtype=torch.long), prefills=prefills)
        if decode_rows:
            meta.decode = self._decode_batch(decode_rows, decode_groups, context_lens)
        return (torch.tensor(input_ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long), meta,
                torch.tensor(logits_rows, dtype=torch.long), sample_seqs)

    def _decode_batch(self, rows: list[int], seqs: list[tuple], lens: list[int]) -> DecodeBatch:
        """Rows that attend with one query each over the first lens[i] tokens of their request's cache; seqs holds
        (request, its number of rows) in row order. The decodes, and with the paged kernel every prefill row too:
        one kernel for both, so a token's attention does not depend on whether its prompt came whole, in chunks
        or partly from the prefix cache."""
        width = max(len(seq.block_table) for seq, _ in seqs)
        tables = torch.tensor([seq.block_table + [0] * (width - len(seq.block_table)) for seq, _ in seqs], dtype=torch.int32)
        if len(rows) > len(seqs):                        # a request's rows share its table
            tables = tables.repeat_interleave(torch.tensor([n for _, n in seqs]), dim=0)
        d = DecodeBatch(torch.tensor(rows), tables, torch.tensor(lens, dtype=torch.int32), self.use_paged_kernel)
        if not d.use_kernel:
            pos = torch.arange(max(lens))                                       # [L]
            blocks = tables.long().gather(1, (pos // self.block_size).expand(len(rows), -1).clamp(max=width - 1))
            d.slots = blocks * self.block_size + pos % self.block_size           # [B_d, L]
            d.mask = (pos[None, :] < d.context_lens[:, None])[:, None, None, :]  # [B_d, 1, 1, L]
        return d

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch):
        """Returns [(seq, token_id, logprob)] for the requests that produced a token this step."""
        input_ids, positions, meta, logits_rows, sample_seqs = self.prepare(batch)
        with self.threads.apply():
            logits = self.model(input_ids, positions, meta, logits_rows)     # [R, V]
            tokens, logprobs = sample(logits, sample_seqs, self.argmax)
        return list(zip(sample_seqs, tokens, logprobs))
