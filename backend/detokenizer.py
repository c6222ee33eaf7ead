"""Incremental detokenisation: turns each request's new token ids into exactly the text they add.

Decoding the new ids on their own loses leading spaces (SentencePiece) and splits multi-byte
characters; so each step decodes a short window (vLLM's prefix and read offsets): the ids already
turned into text last time (the context: a few prompt tokens at first) plus the unread ones, and
keeps what the unread ones add. A window ending in an incomplete UTF-8 character waits for the next
token. The work per token stays constant however long the output grows (decoding the whole output
every step cost 0.35 ms per request at 2000 tokens). Text is held back for as many characters as a
stop string could still need, so that a matched stop string is never streamed.
"""
PREFIX_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], stop: list[str], include_stop: bool = False):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-PREFIX_TOKENS:])   # the prompt's tail, then every output id
        self.prefix_offset, self.read_offset = 0, len(self.ids)   # ids[prefix:read] = the last text-making window
        self.prefix_text = self._decode(self.ids)
        self.text = ""            # output text decoded so far (complete characters only)
        self.sent = 0             # characters of `text` already returned as deltas
        self.stop = stop
        self.include_stop = include_stop
        self.hold = max((len(s) for s in stop), default=1) - 1 if not include_stop else 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def append(self, token_ids: list[int], final: bool = False) -> None:
        self.ids.extend(token_ids)
        window = self._decode(self.ids[self.prefix_offset:])
        # A normalizer may join text across the window's start: then the unread ids decode on their own.
        added = window[len(self.prefix_text):] if window.startswith(self.prefix_text) else \
            self._decode(self.ids[self.read_offset:])
        if added and (final or not added.endswith("\ufffd")):
            self.text += added
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])

    def find_stop(self) -> str | None:
        """If a stop string now appears, cut the text there and return it."""
        if not self.stop:
            return None
        start = max(0, self.sent - self.hold)
        best = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        i, s = best
        self.text = self.text[: i + len(s) if self.include_stop else i]
        return s

    def delta(self, final: bool) -> str:
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out = self.text[self.sent:end]
        self.sent = end
        return out
