"""Inflight-batching scheduler: picks, every step, which requests run and how many tokens each.

Running requests go first (decodes and unfinished chunked prefills), then waiting requests are
admitted FCFS while the step's token budget (max_num_tokens), max_batch_size and the KV budget
allow. guaranteed_no_evict reserves a request's whole KV (prompt + max_tokens) at admission and
never preempts; max_utilization allocates as it goes and, when blocks run out, preempts the newest
running request by recompute and puts it first in line to resume. With V1 (static) batching a new
batch is admitted only when the previous one has finished.
"""
from collections import deque
from dataclasses import dataclass, field

from backend.block_manager import BlockManager
from backend.config import EngineConfig
from backend.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    def add(self, seq: Sequence, n: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(n)

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.config = config
        self.block_manager = block_manager
        self.no_evict = config.batch_scheduler_policy == "guaranteed_no_evict"
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_preempted_waiting(self) -> int:
        return sum(1 for s in self.waiting if s.was_preempted)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_tokens
        chunked = self.config.enable_chunked_context

        for seq in list(self.running):
            if seq not in self.running:          # preempted earlier in this loop
                continue
            n = seq.num_tokens - seq.num_computed_tokens
            if chunked:
                n = min(n, budget)
            if n <= 0 or n > budget:
                continue
            if not self._reserve(seq, seq.num_computed_tokens + n, batch):
                continue
            batch.add(seq, n)
            budget -= n

        admit = self.config.inflight or not self.running
        while admit and self.waiting and budget > 0 and len(self.running) < self.config.max_batch_size:
            seq = self.waiting[0]
            reserve = seq.max_total_tokens if self.no_evict else seq.num_tokens
            if not self.block_manager.can_allocate(seq, reserve):
                break
            n = seq.num_tokens - self.block_manager.cached_prefix_tokens(seq)
            if n > budget:
                if chunked:
                    n = budget
                elif batch.seqs or not seq.was_preempted:
                    break
                # else: a resumed request may overrun the budget in a step of its own, or it never resumes
            self.waiting.popleft()
            self.block_manager.allocate(seq, reserve)
            n = min(seq.num_tokens - seq.num_computed_tokens, n)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.add(seq, n)
            budget -= n
        return batch

    def _reserve(self, seq: Sequence, num_tokens: int, batch: ScheduledBatch) -> bool:
        """Make room for `num_tokens` of `seq`; under max_utilization preempt the newest requests."""
        bm = self.block_manager
        while not bm.can_grow(seq, num_tokens):
            if self.no_evict:
                raise RuntimeError("guaranteed_no_evict request outgrew its reservation")
            victim = self.running[-1]
            self._preempt(victim, batch)
            if victim is seq:
                return False
        bm.grow(seq, num_tokens)
        return True

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Recompute preemption: drop its KV and put it first in line; its tokens are kept."""
        self.running.remove(seq)
        if seq in batch.seqs:
            i = batch.seqs.index(seq)
            batch.seqs.pop(i)
            batch.num_new_tokens.pop(i)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.was_preempted = True
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
