"""EngineThread: drives an LLMEngine from one background thread for servers.

Callers submit and abort from any thread; only this thread touches the engine's state. The
loop sleeps on a condition variable whenever there is nothing to run (no polling, no spinning)
and wakes on submit, abort or stop. Outputs go to each request's callback from this thread, so
callbacks must be quick (hand off to a queue if they do I/O)."""
import logging
import threading
from collections import deque
from typing import Callable

from backend.llm_engine import LLMEngine
from backend.outputs import EngineStats, RequestOutput
from backend.sampling_params import SamplingParams

log = logging.getLogger(__name__)
OutputCallback = Callable[[RequestOutput], None]


class EngineThread:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._cv = threading.Condition()
        self._adds: deque = deque()        # (sequence, callback) waiting to enter the engine
        self._unscheduled: list = []       # submitted since the last step's schedule() (superset of _adds)
        self._aborts: deque[str] = deque()
        self._callbacks: dict[str, OutputCallback] = {}
        self._stats = engine.stats()
        self._stopping = False
        self._stalled = False              # the last step could schedule nothing: sleep until something changes
        self._thread = threading.Thread(target=self._loop, name="engine-loop", daemon=True)

    def start(self) -> "EngineThread":
        self._thread.start()
        return self

    def submit(self, request_id: str, prompt, params: SamplingParams, on_output: OutputCallback) -> None:
        """Validate now (raises InvalidRequest in the caller's thread), then queue for the engine."""
        seq = self.engine.make_sequence(request_id, prompt, params)
        with self._cv:
            if self._stopping:
                raise RuntimeError("engine is stopping")
            if request_id in self._callbacks:
                from backend.errors import InvalidRequest
                raise InvalidRequest("request_id", f"{request_id!r} is already running")
            self._callbacks[request_id] = on_output
            self._adds.append(seq)
            self._unscheduled.append(seq)
            self._cv.notify_all()

    def abort(self, request_id: str) -> None:
        with self._cv:
            self._aborts.append(request_id)
            self._cv.notify_all()

    def wait_for_capacity(self, timeout: float | None = None) -> bool:
        """Block while the engine is full (until stop or timeout); True when it can take more.

        Full: the last step left requests waiting, or the requests submitted since then would not fit
        in the batch slots and KV blocks that step left free (a conservative guess, no prefix-cache
        hits counted; the next step decides). Returning at once when they fit frees the model instance for
        the requests Triton queued meanwhile. With V1 (static batching)
        full means max_batch_size requests wait, so the next batch forms from all that arrive while
        the current one runs to completion."""
        with self._cv:
            return self._cv.wait_for(lambda: self._stopping or not self._full(), timeout)

    def _full(self) -> bool:
        config, stats, new = self.engine.config, self._stats, self._unscheduled
        if not config.inflight:
            return stats.waiting + len(new) >= config.max_batch_size
        if stats.waiting:
            return True
        if not new:
            return False
        if stats.active - stats.waiting + len(new) > config.max_batch_size:
            return True
        blocks_for = self.engine.block_manager.blocks_for
        no_evict = self.engine.scheduler.no_evict
        need = sum(blocks_for(seq.max_total_tokens if no_evict else seq.num_tokens + 1) for seq in new)
        return need > stats.kv_blocks_free

    def stats(self) -> EngineStats:
        with self._cv:
            return self._stats

    def num_requests(self) -> int:
        with self._cv:
            return len(self._callbacks)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stopping or self._adds or self._aborts
                                  or (self.engine.has_unfinished_requests() and not self._stalled))
                if self._stopping:
                    break
                while self._adds:
                    self.engine.add_sequence(self._adds.popleft())
                while self._aborts:
                    self.engine.abort(self._aborts.popleft())
            outputs = self.engine.step()
            with self._cv:
                self._stats = self.engine.stats()
                self._unscheduled = list(self._adds)
                self._stalled = not outputs and self._stats.scheduled == 0
                callbacks = [(self._callbacks.get(o.request_id), o) for o in outputs]
                for o in outputs:
                    if o.finished:
                        self._callbacks.pop(o.request_id, None)
                self._cv.notify_all()      # wakes wait_for_capacity
            for callback, out in callbacks:
                if callback is None:
                    continue
                try:
                    callback(out)
                except Exception:
                    log.exception("output callback for %s failed", out.request_id)
        self._cancel_all()

    def _cancel_all(self) -> None:
        """On stop, every request still held gets a final cancelled output."""
        with self._cv:
            pending = list(self._adds)
            self._adds.clear()
            self._unscheduled.clear()
            callbacks = dict(self._callbacks)
            self._callbacks.clear()
            self._cv.notify_all()
        for rid in list(self.engine.sequences):
            self.engine.abort(rid)
        outs = self.engine.step() if self.engine.has_unfinished_requests() else []
        outs += [RequestOutput(s.request_id, [], "", True, "cancelled", s.num_prompt_tokens, 0) for s in pending]
        for out in outs:
            cb = callbacks.get(out.request_id)
            if cb is not None:
                try:
                    cb(out)
                except Exception:
                    log.exception("output callback for %s failed", out.request_id)
