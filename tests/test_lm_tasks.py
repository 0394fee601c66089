"""Language-model tasks: losses against the models' own ``labels=`` loss and by hand; data; MLM masking."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertForMaskedLM, BertForPreTraining, GPTNeoXForCausalLM

from lm_fixtures import bert_config, build_tokenizer, neox_config
from star_merge.tasks import task_for


def _batch(vocab, seed=0, b=3, t=10):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (b, t), generator=g)


def test_task_is_derived_from_the_architecture_or_named():
    assert task_for(neox_config(50)).name == "causal-lm"
    assert task_for(bert_config(50)).name == "masked-lm"
    assert task_for(bert_config(50, architectures=["BertForPreTraining"])).name == "masked-lm"
    from transformers import GPT2Config

    assert task_for(GPT2Config(architectures=["GPT2LMHeadModel"])).name == "causal-lm"
    assert task_for(bert_config(50), name="causal-lm").name == "causal-lm"


def test_causal_loss_is_the_models_own_labels_loss():
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(neox_config(40)).eval()
    ids = _batch(40)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding at the end of one row
    labels = ids.clone()
    labels[mask == 0] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    task = task_for(model)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        ours = task.loss(model, batch)
        # without stored labels the task derives them from the inputs and the padding mask
        derived = task.loss(model, {"input_ids": ids, "attention_mask": mask})
        log_probs, targets = task.predict(model, batch)
    assert torch.allclose(ours, ref, atol=1e-6) and torch.allclose(derived, ref, atol=1e-6)
    assert log_probs.shape == (3 * 9 - 3, 40) and targets.shape == (24,)  # row 1: positions 1..6 only
    assert math.isclose(float(torch.nn.functional.nll_loss(log_probs, targets)), float(ref), rel_tol=1e-5)


def test_causal_loss_by_hand_on_a_tiny_case():
    """Two tokens [a, b]: the only target is b, predicted from position 0's logits."""

    class Fixed(torch.nn.Module):
        main_input_name = "input_ids"

        def forward(self, input_ids, attention_mask=None):
            from types import SimpleNamespace

            logits = torch.tensor([[[0.0, math.log(3.0), 0.0], [5.0, 5.0, 5.0]]])
            return SimpleNamespace(logits=logits)

    task = task_for(name="causal-lm")
    loss = task.loss(Fixed(), {"input_ids": torch.tensor([[0, 1]])})
    assert math.isclose(float(loss), -math.log(3 / 5), rel_tol=1e-6)  # softmax([0, ln3, 0])[1] = 3/5


@pytest.mark.parametrize("cls", [BertForMaskedLM, BertForPreTraining])
def test_masked_loss_is_the_models_own_labels_loss(cls):
    torch.manual_seed(0)
    arch = cls.__name__
    model = cls(bert_config(40, architectures=[arch])).eval()
    ids = _batch(40, 1)
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 0], labels[2, 9] = 7, 11, 13, 17
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    task = task_for(model)
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels) if cls is BertForMaskedLM else None
        if cls is BertForMaskedLM:
            ref = out.loss
        else:  # ForPreTraining adds the NSP loss; its MLM part is CE over prediction_logits at the labels
            logits = model(input_ids=ids).prediction_logits
            ref = torch.nn.functional.cross_entropy(logits.view(-1, 40), labels.view(-1), ignore_index=-100)
        ours = task.loss(model, batch)
    assert torch.allclose(ours, ref, atol=1e-6)
    log_probs, targets = task.predict(model, batch)
    assert targets.tolist() == [7, 11, 13, 17] and log_probs.shape == (4, 40)


def test_masked_loss_by_hand():
    from types import SimpleNamespace

    class Fixed(torch.nn.Module):
        main_input_name = "input_ids"

        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1, 1, 1.0]]])))

    task = task_for(name="masked-lm")
    batch = {"input_ids": torch.tensor([[4, 4, 4]]), "labels": torch.tensor([[1, -100, 2]])}
    expected = -(math.log(0.25) + math.log(1 / 3)) / 2  # position 0 -> 1, position 2 -> 2; position 1 ignored
    assert math.isclose(float(task.loss(Fixed(), batch)), expected, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------- data
def test_group_texts_is_run_clm_grouping():
    from star_merge.tasks.lm_data import group_texts

    out = group_texts({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "attention_mask": [[1] * 3, [1] * 2, [1] * 4]}, 4)
    assert out["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9 is the dropped remainder
    assert out["attention_mask"] == [[1] * 4, [1] * 4]


def test_masking_semantics_and_purity():
    from star_merge.tasks.lm_data import Masking, mask_tokens

    m = Masking(mask_token_id=4, vocab_size=1000, probability=0.15, seed=7)
    ids = _batch(1000, 3, b=64, t=128)
    special = torch.zeros_like(ids)
    special[:, 0] = special[:, -1] = 1
    x, y = mask_tokens(ids, special, m, epoch=0)
    target = y != -100
    assert not target[:, 0].any() and not target[:, -1].any()  # special tokens are never targets
    assert torch.equal(y[target], ids[target])  # targets are the original tokens
    assert torch.equal(x[~target], ids[~target])  # nothing else changes
    rate = target.sum().item() / (64 * 126)
    assert 0.13 < rate < 0.17
    n = target.sum().item()
    masked = (x[target] == 4).sum().item() / n
    kept = (x[target] == ids[target]).sum().item() / n
    assert 0.76 < masked < 0.84 and 0.07 < kept < 0.14  # 80 % [MASK], 10 % random, 10 % (plus random hits) kept
    # a pure function of (seed, epoch, block): the same again, a row alone the same as in its batch,
    # another epoch or seed different
    assert all(torch.equal(a, b) for a, b in zip((x, y), mask_tokens(ids, special, m, epoch=0)))
    x5, y5 = mask_tokens(ids[5:6], special[5:6], m, epoch=0)
    assert torch.equal(x5[0], x[5]) and torch.equal(y5[0], y[5])
    assert not torch.equal(mask_tokens(ids, special, m, epoch=1)[1], y)
    assert not torch.equal(mask_tokens(ids, special, Masking(4, 1000, 0.15, 8), epoch=0)[1], y)


def test_text_dataset_prepared_into_blocks(tmp_path):
    from star_merge.data import DataArguments, DatasetError, load_task_dataset
    from star_merge.tasks.lm_data import EVAL_EPOCH, masking_for, mask_tokens, originals

    for split, text in (("train", "the cat sat on the mat\nthe dog sat too\n"), ("test", "a cat and a dog\n")):
        (tmp_path / f"{split}.txt").write_text(text * 20)
    tok = build_tokenizer(60, bert_template=False)
    causal = load_task_dataset(DataArguments(dataset_name=str(tmp_path), block_size=8), task=task_for(name="causal-lm"),
                               processor=tok)
    expected = tok("the cat sat on the mat", add_special_tokens=False)["input_ids"]
    first = causal["train"][0]
    assert first["input_ids"] == first["labels"] and len(first["input_ids"]) == 8
    assert first["input_ids"][: min(8, len(expected))] == expected[:8]
    total = sum(len(tok(line, add_special_tokens=False)["input_ids"]) for line in ["the cat sat on the mat",
                                                                                   "the dog sat too"] * 20)
    assert len(causal["train"]) == total // 8
    masked_task = task_for(name="masked-lm")
    tok = build_tokenizer(60)  # a BERT-style tokenizer: [CLS] text [SEP]
    args = DataArguments(dataset_name=str(tmp_path), block_size=8)
    mlm = load_task_dataset(args, task=masked_task, processor=tok)
    row = mlm["test"].with_format("torch")[:4]
    orig = originals(row)
    # the stored masking is the fixed evaluation masking of the original blocks
    ids, labels = mask_tokens(orig, row["special_tokens_mask"], masking_for(tok, args), EVAL_EPOCH)
    assert torch.equal(ids, row["input_ids"]) and torch.equal(labels, row["labels"])
    assert orig[0, 0] == tok.cls_token_id  # special tokens added per text, never targets
    with pytest.raises(DatasetError, match="--text_column"):
        load_task_dataset(DataArguments(dataset_name=str(tmp_path), text_column="body"), task=masked_task,
                          processor=tok)
    with pytest.raises(DatasetError, match="block_size"):
        load_task_dataset(DataArguments(dataset_name=str(tmp_path), block_size=100000), task=masked_task,
                          processor=tok)


# ---------------------------------------------------------------------------------------------- memory
def test_half_precision_anchors_stay_half_precision_in_host_memory():
    """A bf16 population is held as bf16 rows (not widened); the step still interpolates in θ's float32."""
    from star_merge.modeling import build_model
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    config = neox_config(40)
    anchors = [(f"a{i}", {k: v.to(torch.bfloat16) for k, v in build_model(config, i).state_dict().items()})
               for i in range(2)]
    data = {"input_ids": [[1, 2, 3, 4]] * 4}
    from datasets import Dataset

    ds = Dataset.from_dict(data)
    args = StarlightConfig(output_dir=None, num_train_epochs=1)
    trainer = StarlightTrainer(model=config, args=args, anchors=anchors, train_dataset=ds)
    assert trainer.anchors.dtype == torch.bfloat16
    flat = trainer.layout.flatten(anchors[1][1], dtype=torch.float32)
    assert torch.equal(trainer.anchors[1].float(), flat)  # bf16 -> bf16 is exact
    mixed = [anchors[0], ("f32", build_model(config, 5).state_dict())]
    trainer = StarlightTrainer(model=config, args=args, anchors=mixed, train_dataset=ds)
    assert trainer.anchors.dtype == torch.float32
    trainer = StarlightTrainer(model=config, args=args, anchors=anchors, train_dataset=ds)
    result = trainer.train()  # steps run: bf16 rows, float32 θ and interpolation
    assert all(v.dtype == torch.float32 for v in result.model.state_dict().values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values() if v.is_floating_point())


def test_one_text_column_and_one_tokenizer_loader_for_classification_and_lms(tmp_path):
    """The merged DataArguments: one --text_column (None: 'text' for LMs), the classification checks kept, and
    task_and_processor loading the LM tokenizer through processing.py (--processor_name_or_path honoured)."""
    from star_merge.data import DataArguments, DatasetError, task_and_processor

    assert DataArguments().text_column is None
    with pytest.raises(DatasetError, match="--input_column"):
        DataArguments(text_column="body", input_column="x")
    with pytest.raises(DatasetError, match="block_size"):
        DataArguments(block_size=1)
    with pytest.raises(DatasetError, match="mlm_probability"):
        DataArguments(mlm_probability=1.0)
    model, tokdir = tmp_path / "m", tmp_path / "tok"
    neox_config(60).save_pretrained(model)  # a member saved without its tokenizer
    with pytest.raises(DatasetError, match="no usable tokenizer"):
        task_and_processor(DataArguments(), str(model))
    tok = build_tokenizer(60, bert_template=False)
    tok.save_pretrained(tokdir)
    task, loaded = task_and_processor(DataArguments(processor_name_or_path=str(tokdir)), str(model))
    assert task.name == "causal-lm" and loaded.get_vocab() == tok.get_vocab()
    tok.save_pretrained(model)
    assert task_and_processor(DataArguments(), str(model))[1].get_vocab() == tok.get_vocab()


def test_block_size_capped_at_the_models_position_table(tmp_path, caplog):
    """BERT MLM members with max_position_embeddings=64 and the default block_size 128: blocks of 64 tokens and a
    message (a 128-token block failed inside the position embeddings: 'tensor a (128) ... tensor b (64)')."""
    import logging

    from lm_fixtures import write_corpus
    from star_merge.data import DataArguments, make_dataloader
    from star_merge.modeling import build_model
    from star_merge.population import save_checkpoint
    from star_merge.population_data import load_population_data

    corpus = write_corpus(tmp_path / "corpus")
    tok = build_tokenizer(300)
    config = bert_config(len(tok))
    assert config.max_position_embeddings == 64
    members = [save_checkpoint(build_model(config, seed), str(tmp_path / f"m{seed}"), processor=tok) for seed in (0, 1)]
    args = DataArguments(dataset_name=corpus, max_seq_length=32, max_train_samples=8, max_eval_samples=8)
    assert args.block_size == 128
    with caplog.at_level(logging.WARNING):
        data = load_population_data(args, members, evaluation=True)
    assert "block_size=128 is longer than the model's 64 positions; using block_size=64" in caplog.text
    assert {len(ids) for ids in data.dataset["test"]["input_ids"]} == {64}
    model = build_model(config, 0).eval()
    batch = next(iter(make_dataloader(data.dataset["test"], 4, collate_fn=data.collate_fn)))
    with torch.no_grad():
        assert math.isfinite(data.task.loss(model, batch).item())
    # a block_size that fits is kept as given
    assert len(load_population_data(DataArguments(dataset_name=corpus, block_size=16, max_eval_samples=2), members,
                                    evaluation=True).dataset["test"][0]["input_ids"]) == 16
