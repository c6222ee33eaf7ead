"""Tiny random-weight checkpoints of every supported family, built offline with transformers,
with a byte-level BPE tokenizer trained on local text. The reference oracle for engine tests."""
import os

import torch

BASE = dict(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
            pad_token_id=None, tie_word_embeddings=False)
FAMILIES = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                      norm_topk_prob=False),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16, norm_topk_prob=True),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=False),
    "llama": {},
    "qwen2": {},
    "qwen3": dict(head_dim=16),
}
TEXT = ("The quick brown fox jumps over the lazy dog. Paged attention stores keys and values in blocks. "
        "Mixture of experts routes every token to a few experts. 北京是中国的首都。 Ünïcödé text too. ") * 20


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def build_tiny_model(model_type: str, out_dir: str, seed: int = 0, **overrides) -> str:
    """Save a random-weight checkpoint + tokenizer of `model_type` into out_dir; returns out_dir."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **{**BASE, **FAMILIES[model_type], **overrides})
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():   # larger weights than the default init make logits decisive (fewer near-ties)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
    model.save_pretrained(out_dir)
    build_tokenizer(cfg.vocab_size).save_pretrained(out_dir)
    return out_dir
