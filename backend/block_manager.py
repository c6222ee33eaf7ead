"""Paged KV cache bookkeeping: a pool of fixed-size blocks, per-sequence block tables,
reference counts, and (with enable_kv_cache_reuse) a prefix cache keyed by a chained hash
of each full block's tokens, whose unused blocks are evicted least-recently-freed first."""
from collections import deque
from dataclasses import dataclass, field

from backend.sequence import Sequence

NO_HASH = -1


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: int = NO_HASH
    token_ids: tuple = field(default=())


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_reuse: bool = False):
        self.block_size = block_size
        self.enable_reuse = enable_reuse
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: deque[int] = deque(range(num_blocks))   # oldest-freed first = LRU order
        self.free_set = set(range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        self.num_reused_blocks = 0        # blocks served from the prefix cache, cumulative
        self.cache_queried_tokens = 0
        self.cache_hit_tokens = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take_new(self) -> int:
        """Pop the least recently freed block; whatever it cached is evicted."""
        block_id = self.free_ids.popleft()
        self.free_set.discard(block_id)
        block = self.blocks[block_id]
        if block.hash != NO_HASH:
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash, block.token_ids = NO_HASH, ()
        block.ref_count = 1
        return block_id

    def _revive(self, block_id: int) -> None:
        """Take a free block back because the prefix cache holds exactly what we need."""
        self.free_ids.remove(block_id)
        self.free_set.discard(block_id)
        self.blocks[block_id].ref_count = 1

    def cached_prefix_blocks(self, seq: Sequence) -> list[int]:
        """Block ids holding this prompt's leading full blocks, as long as the cache has them."""
        if not self.enable_reuse:
            return []
        hits, h = [], NO_HASH
        # Leave at least one prompt token to compute: its logits give the first output token.
        n_full = (seq.num_prompt_tokens - 1) // self.block_size
        for i in range(n_full):
            ids = tuple(seq.prompt_token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = hash((h, ids))
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != ids:
                break
            hits.append(block_id)
        return hits

    def cached_prefix_tokens(self, seq: Sequence) -> int:
        return len(self.cached_prefix_blocks(seq)) * self.block_size

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        hits = self.cached_prefix_blocks(seq)
        revived = sum(1 for b in hits if b in self.free_set)
        return self.blocks_for(num_tokens) - len(hits) + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """First allocation of a waiting sequence: reuse cached prefix blocks, then fresh blocks
        until `num_tokens` fit. Sets num_computed_tokens to what the cache already holds."""
        assert not seq.block_table
        hits = self.cached_prefix_blocks(seq)
        if self.enable_reuse:
            self.cache_queried_tokens += seq.num_prompt_tokens
            self.cache_hit_tokens += len(hits) * self.block_size
        for block_id in hits:
            if block_id in self.free_set:
                self._revive(block_id)
            else:
                self.blocks[block_id].ref_count += 1
        self.num_reused_blocks += len(hits)
        seq.block_table = list(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_cached_prompt_tokens = seq.num_computed_tokens
        self.grow(seq, num_tokens)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(seq.block_table) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Append blocks so the sequence can hold `num_tokens` tokens."""
        need = self.blocks_for(num_tokens) - len(seq.block_table)
        if need > self.num_free_blocks:
            raise RuntimeError(f"KV cache out of blocks: need {need}, free {self.num_free_blocks}")
        for _ in range(need):
            seq.block_table.append(self._take_new())

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of blocks that are now full of computed tokens (prefix cache)."""
        if not self.enable_reuse:
            return
        tokens = seq.token_ids
        n_full = min(seq.num_computed_tokens, len(tokens)) // self.block_size
        h = NO_HASH
        for i in range(n_full):
            block = self.blocks[seq.block_table[i]]
            ids = tuple(tokens[i * self.block_size:(i + 1) * self.block_size])
            h = hash((h, ids))
            if block.hash == h:
                continue
            if h in self.hash_to_block:       # same content already cached in another block
                continue
            block.hash, block.token_ids = h, ids
            self.hash_to_block[h] = block.block_id

    def free(self, seq: Sequence) -> None:
        # Free the tail first so the prefix, most likely to be shared again, is evicted last.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if block.hash == NO_HASH:
                    self.free_ids.appendleft(block_id)   # nothing cached: reuse it first
                else:
                    self.free_ids.append(block_id)
                self.free_set.add(block_id)
        seq.block_table = []
