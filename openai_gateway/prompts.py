"""Chat messages -> prompt text with the model's own chat template, and prompt token counts.

The tokenizer runs on one worker thread, never on the event loop: templating and tokenising a long
conversation takes milliseconds that would stall every other stream. One thread also keeps the HF
fast tokenizer from being used concurrently (it is not safe to reconfigure from two threads).
"""
import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Awaitable, Callable

from openai_gateway.errors import OpenAIError, bad_request

log = logging.getLogger("openai_gateway")


class PromptBuilder:
    def __init__(self, tokenizer_dir: Path | None, find_model_dir: Callable[[], Awaitable[Path | None]]):
        """find_model_dir: asks Triton for its model folder, used when TOKENIZER_DIR is unset."""
        self._dir = tokenizer_dir
        self._find_model_dir = find_model_dir
        self._tokenizer = None
        self._no_model_dir = False      # Triton answered, and its model folder is not visible from here
        self.max_seq_len: int | None = None
        self._lock = asyncio.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def load(self, required: bool):
        """The tokenizer, loaded on first use; None when no model folder is known and not required."""
        async with self._lock:
            if self._tokenizer is None:
                folder = self._dir or (None if self._no_model_dir else await self._find_model_dir())
                self._no_model_dir = folder is None
                if folder is None:
                    if not required:
                        return None
                    raise OpenAIError(500, "No tokenizer for the chat template: TOKENIZER_DIR is unset and Triton's "
                                           "model folder is not on this machine. Set TOKENIZER_DIR to the model "
                                           "folder, or use /v1/completions with a ready-made prompt.",
                                      type="server_error", code="tokenizer_unavailable")
                self._tokenizer, self.max_seq_len = await self._run(_load_tokenizer, folder)
                log.info("tokenizer and chat template from %s (context %s tokens)", folder, self.max_seq_len)
            return self._tokenizer

    async def chat_prompt(self, messages: list[dict]) -> tuple[str, int]:
        """(prompt text ending with the assistant's turn, its token count)."""
        tokenizer = await self.load(required=True)
        if tokenizer.chat_template is None:
            raise bad_request("messages", "messages: this model's tokenizer has no chat template; send a ready-made "
                                          "prompt to /v1/completions instead", code="no_chat_template")
        return await self._run(_render, tokenizer, messages)

    async def count_tokens(self, prompt: str) -> int | None:
        tokenizer = await self.load(required=False)
        return None if tokenizer is None else await self._run(lambda: len(tokenizer.encode(prompt)))

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer   # imported here: the gateway starts without it when unused

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot load a tokenizer from {folder} ({e}); TOKENIZER_DIR must be a model folder "
                           "with tokenizer files") from None
    try:
        max_seq_len = json.loads((Path(folder) / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        max_seq_len = None
    return tokenizer, max_seq_len


def _render(tokenizer, messages: list[dict]) -> tuple[str, int]:
    from jinja2 import TemplateError

    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as e:   # e.g. "Conversation roles must alternate user/assistant/..."
        raise bad_request("messages", f"messages: the model's chat template refused them: {e}") from None
    return prompt, len(tokenizer.encode(prompt))
