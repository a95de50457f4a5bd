"""Scoring fixed choices at the answer position of a local causal LM (the transformers backend's `score_choices`).

The question answered is: given a chat and the start of the assistant's reply (`prefix`, e.g.
"Rating:"), how likely is the reply to continue with exactly each of the `choices` (" 1" … " 10",
" A"/" B")? Rendering: chat template with the generation prompt, then the prefix. Each choice is
tokenized together with that text and its tokens are where the tokenization of prompt+choice
leaves the tokenization of the prompt alone (as TRL splits prompt and completion), so BPE merges
across the boundary are honoured; the shared context is the longest prefix all choices agree on.

Choices may take several tokens ("10" is "1" "0" in SmolLM2's tokenizer). Their token paths form a
trie; every internal node needs one next-token distribution, and one forward row per deepest
internal node yields all distributions along its path (the row for context+"1" gives the
distribution at the answer position and after "1"). For scale 1..10 that is a single row per
chat. log P(choice) is the sum of its tokens' log-probs; a choice that is a token prefix of another
("1" of "10") has the mass of the continuations into the longer choices taken out, so
"1" means "1 and not 10". Hidden states are projected onto the vocabulary only at the positions
read, so a long prompt never materializes [seq, vocab] logits.
"""

from __future__ import annotations

import math
import os
from typing import Any


def choice_paths(tokenizer: Any, prompt: str, choices: list[str]) -> tuple[list[int], list[tuple[int, ...]]]:
    """(shared context ids, token path of each choice after it)."""
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = [tokenizer(prompt + choice, add_special_tokens=False)["input_ids"] for choice in choices]
    n = min(len(os.path.commonprefix([base, ids])) for ids in full)
    n = min([n] + [len(os.path.commonprefix([full[0], ids])) for ids in full[1:]])
    paths = [tuple(ids[n:]) for ids in full]
    for choice, path in zip(choices, paths):
        if not path:
            raise ValueError(f"choice {choice!r} adds no token after the prompt")
    if len(set(paths)) != len(paths):
        raise ValueError(f"choices {choices} are not told apart by the tokenizer")
    return full[0][:n], paths


def deepest_nodes(paths: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The internal trie nodes (proper prefixes of a path, the root included) that are not a
    proper prefix of another internal node: one forward row each covers every node."""
    internal = {path[:k] for path in paths for k in range(len(path))}
    return sorted(node for node in internal
                  if not any(len(other) > len(node) and other[:len(node)] == node for other in internal))


def exact_logps(paths: list[tuple[int, ...]], dist: dict[tuple[int, ...], Any]) -> list[float]:
    """log P(reply continues with exactly each path), from the next-token log-distributions
    `dist[node]` (a 1-D tensor) at every internal node."""
    out = []
    for path in paths:
        logp = sum(float(dist[path[:k]][path[k]]) for k in range(len(path)))
        onward = {other[len(path)] for other in paths if len(other) > len(path) and other[:len(path)] == path}
        if onward:  # "1" alone: not followed by the token that makes it "10"
            rest = 1.0 - sum(math.exp(float(dist[path][t])) for t in onward)
            logp += math.log(rest) if rest > 0 else -math.inf
        out.append(logp)
    return out


def score_choices(model: Any, tokenizer: Any, prompts: list[str], choices: list[str], batch_size: int,
                  device: Any) -> list[list[float]]:
    """log P(exactly choice | prompt) for every prompt (already rendered, prefix included) and choice."""
    import torch

    plans = [choice_paths(tokenizer, prompt, choices) for prompt in prompts]
    rows = []  # (prompt index, node, token ids)
    for i, (context, paths) in enumerate(plans):
        if not context:
            raise ValueError(f"prompt {i} is empty after tokenization")
        rows += [(i, node, context + list(node)) for node in deepest_nodes(paths)]
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][2]))
    dists: list[dict[tuple[int, ...], Any]] = [{} for _ in prompts]
    head = model.get_output_embeddings()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[start:start + batch_size]]
            width = max(len(ids) for _, _, ids in batch)
            # right padding: causal attention never lets a real position see the pads after it
            ids = torch.tensor([row + [pad] * (width - len(row)) for _, _, row in batch], device=device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for _, _, row in batch], device=device)
            hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            for b, (i, node, row) in enumerate(batch):
                first = len(row) - len(node) - 1  # the answer position: predicts the node's first token
                logps = head(hidden[b, first:len(row)]).float().log_softmax(-1).cpu()
                for k in range(len(node) + 1):
                    dists[i][node[:k]] = logps[k]
    return [exact_logps(paths, dist) for (_, paths), dist in zip(plans, dists)]
