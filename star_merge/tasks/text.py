"""Raw text for sequence classification: tokenised once with ``datasets.map``, padded per batch."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TOKEN_KEYS", "PaddingCollator", "tokenize_dataset", "token_collator"]

#: Per-token columns a tokenizer produces (padded per batch; everything else is stacked as is).
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize_dataset(dataset_dict, tokenizer, max_seq_length: int | None = None):
    """Tokenise the ``text`` (and ``text_pair``) columns of every split; keeps ``labels`` and every tokenizer output.

    Sequences are truncated to ``max_seq_length`` (default: the tokenizer's limit, at most 512) and not padded:
    padding happens per batch in the collator. ``datasets`` caches the result for datasets read from files."""
    cols = next(iter(dataset_dict.values())).column_names
    pair = "text_pair" in cols
    limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 100_000 else 512
    max_len = int(max_seq_length or min(limit, 512))

    def tokenize(batch):
        return tokenizer(batch["text"], batch["text_pair"] if pair else None, truncation=True, max_length=max_len)

    return dataset_dict.map(tokenize, batched=True, remove_columns=[c for c in cols if c != "labels"],
                            desc="tokenizing")


class PaddingCollator:
    """Pads token columns to the longest sequence of each batch (right side, ``attention_mask`` 0 on padding).

    ``pad_token_id``: the tokenizer's (0 when the population carries no tokenizer). Without an attention mask in
    the data one is made, so padding never reaches the model as real tokens."""

    def __init__(self, pad_token_id: int = 0, padding_side: str = "right"):
        self.pad_token_id, self.padding_side = int(pad_token_id), padding_side

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        keys = examples[0].keys()
        lengths = [len(e["input_ids"]) for e in examples]
        width = max(lengths)
        out: dict[str, torch.Tensor] = {}
        token_keys = [k for k in TOKEN_KEYS if k in keys]
        if "attention_mask" not in token_keys:
            token_keys.append("attention_mask")
        for k in token_keys:
            fill = self.pad_token_id if k == "input_ids" else 0
            rows = torch.full((len(examples), width), fill, dtype=torch.long)
            for i, e in enumerate(examples):
                v = torch.ones(lengths[i], dtype=torch.long) if k not in e else torch.as_tensor(e[k], dtype=torch.long)
                if self.padding_side == "left":
                    rows[i, width - len(v):] = v
                else:
                    rows[i, : len(v)] = v
            out[k] = rows
        for k in keys:
            if k not in out:
                out[k] = torch.stack([torch.as_tensor(e[k]) for e in examples])
        return out


def token_collator(tokenizer=None):
    """Per-batch padding with ``tokenizer``'s pad token and side (``DataCollatorWithPadding`` semantics)."""
    if tokenizer is None:
        return PaddingCollator()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return PaddingCollator(pad, tokenizer.padding_side)
