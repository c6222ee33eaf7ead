"""LLMEngine: add requests at any time, call step() to advance every running request by one
token (inflight batching), read outputs as they come. One step = schedule -> run -> post-process."""
import itertools
import logging
import random
import time

import torch

from backend.block_manager import BlockManager
from backend.config import EngineConfig
from backend.detokenizer import IncrementalDetokenizer
from backend.errors import InvalidRequest
from backend.model_runner import ModelRunner, kv_cache_num_blocks
from backend.models.loader import build_model
from backend.models.placement import place_dense, place_experts, place_threads
from backend.outputs import EngineStats, GenerationResult, RequestOutput
from backend.sampler import torch_argmax
from backend.sampling_params import SamplingParams
from backend.scheduler import ScheduledBatch, Scheduler
from backend.sequence import Sequence

log = logging.getLogger("backend")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LLMEngine:
    def __init__(self, config: EngineConfig):
        from transformers import AutoTokenizer

        t0 = time.monotonic()
        self.config = config
        self.dtype = DTYPES[config.dtype]
        self.model, self.spec, self.hf_config = build_model(config.model, self.dtype)
        self.placement_notes = place_experts(self.model, config.placement, config.expert_dtype)
        note, dense_bf16 = place_dense(self.model, config.dense_dtype, self.dtype, getattr(self.hf_config, "dtype", None))
        self.placement_notes.append(note)
        threads, note = place_threads(self.model, config.num_threads)
        self.placement_notes.append(note)
        self.kv_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(
            config.kv_cache_dtype, torch.bfloat16 if dense_bf16 else self.dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=False)
        except Exception as e:
            raise InvalidRequest("model", f"cannot load the tokenizer from {config.model}: {e}") from None
        self.max_seq_len = config.max_seq_len or self.spec.max_position_embeddings
        if self.spec.sliding_window:
            self.max_seq_len = min(self.max_seq_len, self.spec.sliding_window)
        self.eos_token_ids = self._eos_ids()
        num_blocks, source = kv_cache_num_blocks(config, self.spec, self.kv_dtype, self.max_seq_len)
        self.block_manager = BlockManager(num_blocks, config.tokens_per_block, config.enable_kv_cache_reuse)
        self.scheduler = Scheduler(config, self.block_manager)
        self.runner = ModelRunner(config, self.model, self.spec, num_blocks, self.kv_dtype, threads)
        self.sequences: dict[str, Sequence] = {}
        self._aborted: list[Sequence] = []
        self._last = ScheduledBatch()
        self._last_context = 0
        self.iterations = self.prompt_tokens_total = self.generation_tokens_total = 0
        self._log_settings(source, time.monotonic() - t0)
        if config.warmup:
            self.warmup()

    @classmethod
    def from_pretrained(cls, model_dir: str, **config) -> "LLMEngine":
        return cls(EngineConfig.from_dict({**config, "model": str(model_dir)}))

    def _eos_ids(self) -> frozenset[int]:
        ids = set()
        for src in (getattr(self.hf_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(src)
        try:
            from transformers import GenerationConfig
            gen = GenerationConfig.from_pretrained(self.config.model).eos_token_id
            ids.update([gen] if isinstance(gen, int) else (gen or []))
        except OSError:
            pass
        return frozenset(i for i in ids if 0 <= i < self.spec.vocab_size)

    def _log_settings(self, source: str, load_s: float) -> None:
        c, bm = self.config, self.block_manager
        capacity = bm.num_blocks * bm.block_size
        per_request = bm.blocks_for(self.max_seq_len)
        fit = bm.num_blocks // per_request
        log.info("loaded %s (%s, %d layers, %s) in %.1fs", c.model, self.spec.model_type, self.spec.num_layers,
                 c.dtype, load_s)
        log.info("KV cache: %d tokens = %d blocks x %d tokens (%s, %.1f MiB; from %s); %d max-length (%d-token) "
                 "requests fit", capacity, bm.num_blocks, bm.block_size, str(self.kv_dtype).removeprefix("torch."),
                 self.runner.kv_cache_bytes / 2**20, source, fit, self.max_seq_len)
        log.info("scheduler: %s, batching=%s, max_batch_size=%d, max_num_tokens=%d, chunked_context=%s, "
                 "kv_cache_reuse=%s", c.batch_scheduler_policy, c.batching_strategy, c.max_batch_size,
                 c.max_num_tokens, c.enable_chunked_context, c.enable_kv_cache_reuse)
        for note in self.placement_notes:
            log.info("placement: %s", note)
        log.info("attention: %s", "CPU paged kernel for prefill and decode rows, reads the cache in place"
                 if self.runner.use_paged_kernel else
                 "torch: SDPA for prefills, decodes gather each context (no CPU extension for this dtype or host)")
        log.info("sampler: greedy rows take one argmax per step on %s", "the CPU extension (vectorized)"
                 if self.runner.argmax is not torch_argmax else "torch (no CPU extension on this host)")
        if c.batch_scheduler_policy == "guaranteed_no_evict" and fit < 2:
            log.warning("guaranteed_no_evict reserves prompt + max_tokens per request and the KV budget holds fewer "
                        "than 2 max-length requests: raise max_tokens_in_paged_kv_cache or use max_utilization")

    def warmup(self) -> None:
        t0 = time.monotonic()
        n = min(16, self.max_seq_len - 2)
        self.generate([[0] * n], SamplingParams(max_tokens=2, ignore_eos=True))
        log.info("warm-up done in %.2fs", time.monotonic() - t0)

    # -- requests -------------------------------------------------------------------------------
    def make_sequence(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> Sequence:
        """Tokenise and validate a request without touching engine state (safe from any thread)."""
        if not isinstance(params, SamplingParams):
            raise InvalidRequest("sampling_params", "must be a SamplingParams")
        params.validate()
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequest("prompt", "is empty")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if not all(isinstance(t, int) and 0 <= t < self.spec.vocab_size for t in ids):
                raise InvalidRequest("prompt", f"token ids must be integers in [0, {self.spec.vocab_size})")
        if not ids:
            raise InvalidRequest("prompt", "is empty")
        if len(ids) >= self.max_seq_len:
            raise InvalidRequest("prompt", f"has {len(ids)} tokens; max_seq_len is {self.max_seq_len} (prompt + at "
                                           "least one new token must fit)")
        capacity = self.block_manager.num_blocks * self.block_manager.block_size
        need = min(len(ids) + params.max_tokens, self.max_seq_len)
        if len(ids) + 1 > capacity:
            raise InvalidRequest("prompt", f"has {len(ids)} tokens; the whole KV cache holds {capacity}")
        if self.scheduler.no_evict and need > capacity:
            raise InvalidRequest("max_tokens", f"prompt ({len(ids)}) + max_tokens ({params.max_tokens}) = {need} tokens "
                                               f"exceed the whole KV cache ({capacity} tokens)")
        if len(ids) > self.config.max_num_tokens and not self.config.enable_chunked_context:
            raise InvalidRequest("prompt", f"has {len(ids)} tokens, more than max_num_tokens ({self.config.max_num_tokens});"
                                           " set enable_chunked_context or raise max_num_tokens")
        if params.end_id is None:
            eos = self.eos_token_ids
        else:
            eos = frozenset() if params.end_id < 0 else frozenset([params.end_id])
        if params.ignore_eos:
            eos = frozenset()
        seq = Sequence(request_id, ids, params, eos, self.max_seq_len)
        seq.generator = torch.Generator().manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
        seq.detokenizer = IncrementalDetokenizer(self.tokenizer, ids, params.stop, params.include_stop_str_in_output)
        return seq

    def add_sequence(self, seq: Sequence) -> None:
        if seq.request_id in self.sequences:
            raise InvalidRequest("request_id", f"{seq.request_id!r} is already running")
        self.sequences[seq.request_id] = seq
        self.scheduler.add(seq)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None) -> None:
        self.add_sequence(self.make_sequence(str(request_id), prompt, params or SamplingParams()))

    def abort(self, request_id: str) -> None:
        seq = self.sequences.get(request_id)
        if seq is not None and not seq.aborted:
            seq.aborted = True
            self._aborted.append(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.sequences)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -- the step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs = [self._finish(seq, "cancelled") for seq in self._aborted if seq.request_id in self.sequences]
        self._aborted.clear()
        batch = self.scheduler.schedule()
        self._last = batch
        if not batch.seqs:
            return outputs
        now = time.monotonic()
        self._last_context = 0
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
                self.prompt_tokens_total += seq.num_prompt_tokens
            is_decode = n == 1 and seq.num_computed_tokens == seq.num_tokens - 1 and seq.num_computed_tokens > 0
            self._last_context += not is_decode
        try:
            sampled = self.runner.run(batch)
        except Exception as e:           # a failing forward must not take the other requests' server down
            log.exception("engine step failed")
            return outputs + [self._finish(seq, "error", error=str(e)) for seq in list(batch.seqs)]
        self.iterations += 1
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.block_manager.commit_full_blocks(seq)
        for seq, token, logprob in sampled:
            outputs.append(self._append_token(seq, token, logprob))
        if not self.sequences:              # nothing left: the stats must not keep showing the last batch
            self._last, self._last_context = ScheduledBatch(), 0
        return outputs

    def _append_token(self, seq: Sequence, token: int, logprob: float | None) -> RequestOutput:
        seq.output_token_ids.append(token)
        if logprob is not None:
            seq.output_logprobs.append(logprob)
        seq.first_token_time = seq.first_token_time or time.monotonic()
        self.generation_tokens_total += 1
        p, det = seq.params, seq.detokenizer
        reason = None
        if token in seq.eos_token_ids and seq.num_output_tokens > p.min_tokens - 1:
            reason = "stop"
        elif token in p.stop_token_ids:
            reason = "stop"
        det.append([token], final=reason is not None)
        if reason is None and det.find_stop() is not None:
            reason = "stop"
        if reason is None and (seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= seq.max_seq_len):
            reason = "length"
        if reason is not None:
            if reason == "length":
                det.append([], final=True)   # flush an incomplete character rather than lose it
            return self._finish(seq, reason, new_tokens=[token], logprob=logprob)
        return RequestOutput(seq.request_id, [token], det.delta(final=False), False, None, seq.num_prompt_tokens,
                             seq.num_output_tokens, [logprob] if logprob is not None else None)

    def _finish(self, seq: Sequence, reason: str, new_tokens=(), logprob=None, error=None) -> RequestOutput:
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        del self.sequences[seq.request_id]
        delta = seq.detokenizer.delta(final=True) if reason in ("stop", "length") else ""
        return RequestOutput(seq.request_id, list(new_tokens), delta, True, reason, seq.num_prompt_tokens,
                             seq.num_output_tokens, [logprob] if logprob is not None else None, error)

    # -- offline use and introspection ------------------------------------------------------------
    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[GenerationResult]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompts)
        ids = [f"generate-{next(_ids)}" for _ in prompts]
        seqs = {}
        for rid, prompt, p in zip(ids, prompts, params):
            seq = self.make_sequence(rid, prompt, p)
            self.add_sequence(seq)
            seqs[rid] = seq
        done = {}
        while len(done) < len(ids):
            for out in self.step():
                if out.finished and out.request_id in seqs:
                    done[out.request_id] = out
        results = []
        for rid in ids:
            seq = seqs[rid]
            results.append(GenerationResult(rid, seq.prompt_token_ids, seq.output_token_ids, seq.detokenizer.text,
                                            seq.finish_reason, seq.output_logprobs or None))
        return results

    def stats(self) -> EngineStats:
        bm, sch, last = self.block_manager, self.scheduler, self._last
        context = self._last_context
        return EngineStats(
            active=len(self.sequences), scheduled=len(last.seqs), context=context, generation=len(last.seqs) - context,
            waiting=len(sch.waiting), preempted=sch.num_preempted_waiting, max_batch_size=self.config.max_batch_size,
            kv_blocks_max=bm.num_blocks, kv_blocks_used=bm.num_used_blocks, kv_blocks_free=bm.num_free_blocks,
            kv_blocks_reused=bm.num_reused_blocks, tokens_per_block=bm.block_size,
            context_tokens=sum(n for n in last.num_new_tokens if n > 1), iterations=self.iterations,
            num_preemptions=sch.num_preemptions, prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total, prefix_cache_queries=bm.cache_queried_tokens,
            prefix_cache_hits=bm.cache_hit_tokens)


_ids = itertools.count()
