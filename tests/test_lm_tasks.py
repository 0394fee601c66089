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
