"""The engine's threads (num_threads) go where the forward pass spends them, only while it runs."""
import pytest
import torch

from backend import LLMEngine, SamplingParams
from backend.models.placement import ComputeThreads
from kernels import build
from kernels.cpu_moe import best_variant


def threads_seen_in_forward(engine) -> list[tuple[int, int]]:
    """(torch threads, task-pool threads) at the start of every forward pass of one short generation."""
    ext = build.load_variant(best_variant())
    seen = []
    hook = engine.model.register_forward_pre_hook(lambda *_: seen.append((torch.get_num_threads(), ext.get_num_threads())))
    try:
        engine.generate([[1, 2, 3]], SamplingParams(max_tokens=3, ignore_eos=True))
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("family, dense_dtype, expected", [
    ("qwen2_moe", "bf16", ComputeThreads(torch_threads=1, pool_threads=3)),   # every layer on the extension
    ("mixtral", "fp32", ComputeThreads(torch_threads=3, pool_threads=0)),     # torch runs the dense linears
])
def test_threads_go_where_the_layers_run(tiny_model, family, dense_dtype, expected):
    before = torch.get_num_threads()
    engine = LLMEngine.from_pretrained(tiny_model(family), max_tokens_in_paged_kv_cache=512, warmup=False,
                                       dense_dtype=dense_dtype, expert_dtype="int8", num_threads=3)
    assert engine.runner.threads == expected
    assert set(threads_seen_in_forward(engine)) == {(expected.torch_threads, expected.pool_threads or 3)}
    assert torch.get_num_threads() == before          # the rest of the process keeps its setting
