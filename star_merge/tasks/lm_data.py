"""Language-model data: raw text -> the population's tokenizer -> blocks; MLM masking as a pure function.

Causal LM: every split's text is tokenised, concatenated and cut into blocks of ``block_size`` tokens (the
remainder dropped), exactly the grouping of transformers' ``run_clm.py``; ``labels`` are the block itself (the
loss shifts them). Both tokenise each text as the tokenizer does by default (special tokens included: none for
GPT-NeoX / GPT-2, ``[CLS] … [SEP]`` for BERT, as ``run_mlm.py`` without ``--line_by_line``). Masked LM: the same grouping, then :func:`mask_tokens` with ``DataCollatorForLanguageModeling``'s semantics (15 % of the
non-special tokens are targets; of those 80 % become ``[MASK]``, 10 % a random token, 10 % stay). The masking of
one block is a pure function of ``(seed, epoch, the block's tokens)``: training draws a fresh masking per epoch
(:class:`MaskingCollator`, told the epoch by the trainer) and so resumes exactly; the stored splits carry one
fixed masking (``epoch = EVAL_EPOCH``), so every model is scored on the same positions whatever the batching.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .labels import DatasetError

__all__ = ["EVAL_EPOCH", "Masking", "MaskingCollator", "cap_block_size", "check_token_ids", "group_texts",
           "mask_tokens", "prepare_lm_dataset"]

EVAL_EPOCH = -1  # the epoch index of the fixed evaluation masking

logger = logging.getLogger(__name__)

#: Config fields naming the longest sequence a model's position table holds (BERT / NeoX / Llama, GPT-2).
MAX_POSITION_FIELDS = ("max_position_embeddings", "n_positions")


def cap_block_size(data_args, config):
    """``data_args`` with ``block_size`` at most the model's position table, saying so when it was larger (as
    run_clm.py / run_mlm.py do): a block longer than the table fails inside the model's position embeddings."""
    limit = next((int(v) for v in (getattr(config, f, None) for f in MAX_POSITION_FIELDS) if v), None)
    block_size = int(getattr(data_args, "block_size", 128))
    if limit is None or block_size <= limit:
        return data_args
    logger.warning("block_size=%d is longer than the model's %d positions; using block_size=%d "
                   "(set --block_size to choose a shorter one)", block_size, limit, limit)
    return dataclasses.replace(data_args, block_size=limit)


@dataclass(frozen=True)
class Masking:
    """What masking needs to know: the tokenizer's ``[MASK]`` id, the vocabulary size, rate and seed."""

    mask_token_id: int
    vocab_size: int
    probability: float = 0.15
    seed: int = 42


def _block_seed(masking: Masking, epoch: int, ids: torch.Tensor) -> int:
    from ..seeding import mix_seed

    content = zlib.crc32(np.ascontiguousarray(ids.cpu().numpy().astype(np.int64)).tobytes())
    return mix_seed(masking.seed, epoch + 2, content)


def mask_tokens(input_ids: torch.Tensor, special_tokens_mask: torch.Tensor, masking: Masking, epoch: int,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked input_ids, labels)`` for original ``input_ids`` [B, T]; labels are ``-100`` off the targets.

    Each row's draw depends only on ``(masking.seed, epoch, row tokens)``."""
    ids = input_ids.clone()
    labels = input_ids.clone()
    allowed = special_tokens_mask == 0
    if attention_mask is not None:
        allowed &= attention_mask.bool()
    for r in range(ids.shape[0]):
        g = torch.Generator().manual_seed(_block_seed(masking, epoch, input_ids[r]))
        n = ids.shape[1]
        target = (torch.rand(n, generator=g) < masking.probability) & allowed[r]
        u = torch.rand(n, generator=g)
        random_ids = torch.randint(masking.vocab_size, (n,), generator=g)
        labels[r][~target] = -100
        ids[r][target & (u < 0.8)] = masking.mask_token_id
        swap = target & (u >= 0.8) & (u < 0.9)
        ids[r][swap] = random_ids[swap].to(ids.dtype)
    return ids, labels


def originals(batch) -> torch.Tensor:
    """The unmasked tokens of a stored (fixed-masked) batch: the labels where there are targets."""
    labels = batch["labels"]
    return torch.where(labels != -100, labels, batch["input_ids"])


class MaskingCollator:
    """Collate stored masked-LM blocks and re-mask them for training epoch :attr:`epoch` (set by the trainer)."""

    def __init__(self, masking: Masking):
        self.masking, self.epoch = masking, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, examples):
        batch = torch.utils.data.default_collate(examples)
        batch["input_ids"], batch["labels"] = mask_tokens(
            originals(batch), batch["special_tokens_mask"], self.masking, self.epoch, batch.get("attention_mask"))
        return batch


def group_texts(examples: dict, block_size: int) -> dict:
    """run_clm.py's grouping: concatenate every column, drop the remainder, cut into ``block_size`` blocks."""
    concatenated = {k: [t for seq in examples[k] for t in seq] for k in examples}
    total = (len(next(iter(concatenated.values()))) // block_size) * block_size
    return {k: [v[i:i + block_size] for i in range(0, total, block_size)] for k, v in concatenated.items()}


def prepare_lm_dataset(dataset_dict, tokenizer, data_args, causal: bool):
    """Tokenise the ``text_column`` of every split and group it into blocks (see the module docstring)."""
    from datasets import DatasetDict

    if tokenizer is None:
        raise DatasetError("a language-model dataset needs the population's tokenizer; save it with the models")
    column = getattr(data_args, "text_column", None) or "text"
    block_size = int(getattr(data_args, "block_size", 128))
    if not causal and tokenizer.mask_token_id is None:
        raise DatasetError("the tokenizer has no mask token; a masked-LM population needs one ([MASK])")
    out = {}
    for split, ds in dataset_dict.items():
        if column not in ds.column_names:
            raise DatasetError(f"split {split!r} has no text column {column!r} (columns: {ds.column_names}); "
                               "set --text_column")
        texts = [t for t in ds[column] if t and t.strip()]
        enc = tokenizer(texts, return_special_tokens_mask=not causal, return_attention_mask=True)
        cols = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")
                if k in enc}
        blocks = group_texts(cols, block_size)
        if not blocks["input_ids"]:
            raise DatasetError(f"split {split!r} has fewer than block_size={block_size} tokens; "
                               "lower --block_size or use more text")
        from datasets import Dataset

        d = Dataset.from_dict(blocks)
        if causal:
            d = d.add_column("labels", blocks["input_ids"])
        else:
            masking = masking_for(tokenizer, data_args)
            ids, labels = mask_tokens(torch.tensor(blocks["input_ids"]), torch.tensor(blocks["special_tokens_mask"]),
                                      masking, EVAL_EPOCH)
            d = d.remove_columns("input_ids").add_column("input_ids", ids.tolist()).add_column("labels", labels.tolist())
        out[split] = d
    return DatasetDict(out)


def masking_for(tokenizer, data_args) -> Masking:
    return Masking(mask_token_id=int(tokenizer.mask_token_id), vocab_size=len(tokenizer),
                   probability=float(getattr(data_args, "mlm_probability", 0.15)),
                   seed=int(getattr(data_args, "dataset_seed", 42)))


def check_token_ids(dataset, vocab_size: int) -> None:
    """Raise DatasetError unless every split's token ids fit the model's vocabulary."""
    for split, d in dataset.items():
        if len(d) == 0:
            raise DatasetError(f"split {split!r} is empty")
        ids = np.asarray(d["input_ids"])
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise DatasetError(f"split {split!r}: token ids span [{ids.min()}, {ids.max()}] but the model's "
                               f"vocab_size is {vocab_size}; use the population's own tokenizer")
