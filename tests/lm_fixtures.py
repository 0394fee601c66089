"""A tokenizer and tiny language-model populations built here (no Hub): corpus, tokenizer, configs, training."""

from __future__ import annotations

import inspect
import os

import torch

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_MODULES = ("json", "os", "collections", "functools", "itertools", "textwrap", "random", "string", "re", "pathlib",
            "argparse", "inspect", "dataclasses", "shutil", "tempfile", "typing", "logging", "zlib", "heapq", "bisect")


def corpus_lines() -> list[str]:
    """Real English from the standard library's docstrings (one paragraph a line), in a fixed order."""
    import importlib

    lines = []
    for name in _MODULES:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            doc = inspect.getdoc(getattr(mod, attr, None)) if not attr.startswith("_") else None
            if doc:
                lines += [" ".join(p.split()) for p in doc.split("\n\n") if len(p.split()) > 3]
    seen, out = set(), []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def write_corpus(folder, test_every: int = 5) -> str:
    """A local text dataset folder (train.txt / test.txt, the `text` builder's layout)."""
    os.makedirs(folder, exist_ok=True)
    lines = corpus_lines()
    test = [l for i, l in enumerate(lines) if i % test_every == 0]
    train = [l for i, l in enumerate(lines) if i % test_every != 0]
    for name, part in (("train.txt", train), ("test.txt", test)):
        with open(os.path.join(folder, name), "w") as f:
            f.write("\n".join(part) + "\n")
    return str(folder)


def build_tokenizer(vocab_size: int = 300, bert_template: bool = True):
    """A BPE over the corpus (Metaspace words) with BERT-style specials, wrapped in PreTrainedTokenizerFast;
    ``bert_template`` adds [CLS] … [SEP] around every text (a masked LM's tokenizer; a causal LM's adds nothing)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer)
    if bert_template:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def neox_config(vocab_size: int, **kw):
    from transformers import GPTNeoXConfig

    args = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25, use_parallel_residual=True,
                tie_word_embeddings=False, architectures=["GPTNeoXForCausalLM"], pad_token_id=0)
    args.update(kw)
    return GPTNeoXConfig(**args)


def bert_config(vocab_size: int, **kw):
    from transformers import BertConfig

    args = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, architectures=["BertForMaskedLM"], pad_token_id=0)
    args.update(kw)
    return BertConfig(**args)


def train_lm_population(folder, data_dir, kind: str = "causal", seeds=range(5), epochs: int = 2,
                        block_size: int = 32, learning_rate: float = 3e-3, vocab_size: int = 300,
                        max_train_samples: int | None = None, **config_kw):
    """Train one tiny LM per seed on the local corpus with star-merge's own trainer; save each with the
    tokenizer. Returns the checkpoint folders."""
    from star_merge.data import DataArguments, load_task_dataset
    from star_merge.modeling import build_model
    from star_merge.population import save_checkpoint
    from star_merge.population.training import TrainArguments, train_classifier
    from star_merge.tasks import task_for

    tokenizer = build_tokenizer(vocab_size, bert_template=kind != "causal")
    config = (neox_config if kind == "causal" else bert_config)(len(tokenizer), **config_kw)
    task = task_for(config)
    data = load_task_dataset(DataArguments(dataset_name=str(data_dir), block_size=block_size,
                                           max_train_samples=max_train_samples, max_eval_samples=64),
                             task=task, processor=tokenizer)
    args = TrainArguments(num_train_epochs=epochs, learning_rate=learning_rate, per_device_train_batch_size=32)
    paths = []
    for seed in seeds:
        model, _ = train_classifier(build_model(config, seed), data, args, seed=seed, progress=False, task=task)
        paths.append(save_checkpoint(model, os.path.join(str(folder), f"seed{seed}"), processor=tokenizer))
    return paths


def confident_lms(kind: str, n: int = 3, vocab: int = 9) -> dict:
    """``n`` tiny seeded GPT-NeoX (``causal``) or BERT MLM models with a scaled-up head (confident predictions)."""
    from transformers import BertForMaskedLM, GPTNeoXForCausalLM

    out = {}
    for seed in range(n):
        torch.manual_seed(seed)
        if kind == "causal":
            model = GPTNeoXForCausalLM(neox_config(vocab))
        else:
            model = BertForMaskedLM(bert_config(vocab, tie_word_embeddings=False))
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(30)  # ECE, Brier, AUROC far from their uniform values
        out[f"m{seed}"] = model.eval()
    return out


def lm_examples(kind: str, n: int = 7, t: int = 12, vocab: int = 9) -> list[dict]:
    """Seeded blocks; causal: one right-padded row (labels -100); masked: 1-4 targets a row, row 2 none."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        ids = torch.randint(5, vocab, (t,), generator=g)
        row = {"input_ids": ids, "attention_mask": torch.ones(t, dtype=torch.long)}
        if kind == "masked":
            labels = torch.full((t,), -100)
            if i != 2:  # example 2 has no target token
                pos = torch.randperm(t, generator=g)[: 1 + i % 4]
                labels[pos] = ids[pos]
                row["input_ids"] = ids.clone().index_fill_(0, pos, 4)  # [MASK]
            row["labels"] = labels
        else:
            row["labels"] = ids.clone()
            if i == 4:  # right padding
                row["attention_mask"][9:] = 0
                row["labels"][9:] = -100
        rows.append(row)
    return rows
