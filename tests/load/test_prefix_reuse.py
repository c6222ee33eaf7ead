"""Prefix reuse (enable_kv_cache_reuse) through the server: requests sharing a long system prompt are
served from cached KV blocks, /metrics counts the reused blocks and the hit rate (vLLM's
prefix_cache_queries / prefix_cache_hits, in tokens), and the outputs equal those of a server without the
prefix cache. Time to first token is printed, not asserted (2 shared cores)."""
import statistics

from client.timed import timed_stream
from tests.load.conftest import BLOCK
from tests.load.load_helpers import gauges, wait_until

SYSTEM = ("You are a careful assistant. " + "Paged attention stores keys and values in blocks of sixteen tokens. "
          "Mixture of experts routes every token to a few experts. " * 18)
QUESTIONS = ["What is a block?", "What does a router do?", "Why page the cache?", "How many experts run?"]


def ask(server, question):
    return timed_stream(server.grpc_url, f"{SYSTEM}\nQuestion: {question}\nAnswer:", max_tokens=16, min_tokens=16,
                        return_num_output_tokens=True)


def test_shared_system_prompt_is_served_from_the_prefix_cache(max_util_server, no_evict_server, tokenizer):
    system_tokens = len(tokenizer.encode(SYSTEM))
    assert system_tokens >= 600, system_tokens
    before = gauges(max_util_server)
    cached = [ask(max_util_server, q) for q in QUESTIONS]
    prompt_tokens = [len(tokenizer.encode(f"{SYSTEM}\nQuestion: {q}\nAnswer:")) for q in QUESTIONS]
    # Counters reach /metrics with the metrics thread's next refresh, which may follow the last response.
    wait_until(lambda: gauges(max_util_server)["vllm:prefix_cache_queries_total"]
               - before["vllm:prefix_cache_queries_total"] >= sum(prompt_tokens), what="the prefix-cache counters")
    after = gauges(max_util_server)
    reference = [ask(no_evict_server, q) for q in QUESTIONS]

    assert [r.text for r in cached] == [r.text for r in reference], "the prefix cache changed an output"
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    reused = after["kv_reused"] - before["kv_reused"]
    shared_blocks = system_tokens // BLOCK - 1          # full blocks surely identical in every prompt
    print(f"system prompt {system_tokens} tokens; prefix cache: {hits:.0f} of {queries:.0f} prompt tokens hit "
          f"({100 * hits / queries:.0f}%), {reused:.0f} blocks reused; TTFT first {cached[0].ttft * 1000:.0f} ms, "
          f"later {statistics.mean(r.ttft for r in cached[1:]) * 1000:.0f} ms; without the cache "
          f"{statistics.mean(r.ttft for r in reference[1:]) * 1000:.0f} ms")
    assert queries == sum(prompt_tokens)
    assert hits >= (len(QUESTIONS) - 1) * shared_blocks * BLOCK, (hits, shared_blocks)
    assert reused >= (len(QUESTIONS) - 1) * shared_blocks
    assert hits / queries >= 0.6
