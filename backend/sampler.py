"""Per-request sampling: penalties, min_tokens, temperature, top-k, top-p, seeded draws.

Each row is processed on its own with its request's own generator, so a seeded request draws
the same tokens whatever its batch mates are.
"""
from typing import Callable

import torch

from backend.sequence import Sequence


def _plain_greedy(seq: Sequence) -> bool:
    """Greedy with no penalties and no logprobs: the row's argmax, after min_tokens bans the end tokens."""
    p = seq.params
    return (p.greedy and p.repetition_penalty == 1.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0
            and not p.logprobs)


def banned_end_tokens(seq: Sequence) -> list[int]:
    """min_tokens: until the request has that many output tokens, its end tokens cannot be drawn."""
    p = seq.params
    return list(seq.eos_token_ids) + p.stop_token_ids if seq.num_output_tokens < p.min_tokens else []


def ban_end_tokens(row: torch.Tensor, seq: Sequence) -> None:
    """banned_end_tokens, in place on one row."""
    banned = banned_end_tokens(seq)
    if banned:
        row[torch.tensor(banned)] = float("-inf")


def apply_penalties(row: torch.Tensor, seq: Sequence) -> torch.Tensor:
    p = seq.params
    if p.repetition_penalty != 1.0:      # HF semantics: over prompt and output
        ids = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
        vals = row[ids]
        row[ids] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and seq.output_token_ids:   # OpenAI semantics: output only
        counts = torch.bincount(torch.tensor(seq.output_token_ids), minlength=row.shape[0]).to(row.dtype)
        row -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(row.dtype)
    ban_end_tokens(row, seq)
    return row


def sample_row(row: torch.Tensor, seq: Sequence) -> int:
    p = seq.params
    if p.greedy:
        return int(row.argmax())
    row = row / p.temperature
    if p.top_k and p.top_k < row.shape[0]:
        kth = torch.topk(row, p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(0) - sorted_probs > p.top_p    # keep the smallest set reaching top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=seq.generator))


def torch_argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, seqs: list[Sequence],
           argmax: Callable[[torch.Tensor], torch.Tensor] = torch_argmax) -> tuple[list[int], list[float | None]]:
    """logits [R, V] fp32, one row per request (this step's own tensor: changed in place) -> one token (and
    optional logprob) per request. Plain greedy rows take one batched argmax ([R', V] -> int64 [R'], torch's
    answer: kernels.cpu_argmax.argmax_rows where the extension runs), the others one row at a time."""
    is_plain = [_plain_greedy(seq) for seq in seqs]
    plain = [i for i, p in enumerate(is_plain) if p]
    tokens: list[int] = [0] * len(seqs)
    logprobs: list[float | None] = [None] * len(seqs)
    if plain:
        ban_rows, ban_ids = [], []                   # one index_put for every row's bans, not one per row
        for i in plain:
            banned = banned_end_tokens(seqs[i])
            ban_rows += [i] * len(banned)
            ban_ids += banned
        if ban_rows:
            logits[torch.tensor(ban_rows), torch.tensor(ban_ids)] = float("-inf")
        picked = logits if len(plain) == len(seqs) else logits[plain]
        for i, tok in zip(plain, argmax(picked.contiguous()).tolist()):
            tokens[i] = tok
    for i, seq in enumerate(seqs):
        if is_plain[i]:
            continue
        row = apply_penalties(logits[i].clone(), seq)
        tokens[i] = sample_row(row, seq)
        if seq.params.logprobs:
            logprobs[i] = float(torch.log_softmax(row, dim=-1)[tokens[i]])
    return tokens, logprobs
