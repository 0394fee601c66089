"""The task seam: task_for from architectures, input filtering, loss and predictions against hand computations."""

import math

import pytest
import torch

from star_merge.models import StarMLPConfig, StarMLPForClassification
from star_merge.modeling import build_model, model_class_for
from star_merge.tasks import TaskError, available_tasks, task_for


def test_task_for_reads_the_architecture():
    from transformers import BertConfig, ViTConfig

    assert task_for(BertConfig(architectures=["BertForSequenceClassification"])).name == "sequence-classification"
    assert task_for(ViTConfig(architectures=["ViTForImageClassification"])).name == "image-classification"
    assert task_for(StarMLPConfig()).name == "sequence-classification"
    assert task_for(build_model(StarMLPConfig(hidden_sizes=[4]), seed=0)).pipeline_tag == "text-classification"
    assert task_for(None, name="image-classification").bma_head == "image-classification"
    assert {"sequence-classification", "image-classification"} <= set(available_tasks())


def test_task_for_unknown_architecture_names_the_flag():
    from transformers import BertConfig

    with pytest.raises(TaskError, match="--task"):  # span prediction: no task for it (LM heads now have one)
        task_for(BertConfig(architectures=["BertForQuestionAnswering"]))
    with pytest.raises(TaskError, match="unknown task 'nope'.*--task"):
        task_for(None, name="nope")


def test_config_without_architectures_builds_the_classification_class():
    from transformers import BertConfig, BertForSequenceClassification

    assert model_class_for(BertConfig()) is BertForSequenceClassification
    assert task_for(BertConfig()).name == "sequence-classification"


def test_model_inputs_keeps_only_forward_arguments():
    model = build_model(StarMLPConfig(input_size=3, hidden_sizes=[4], num_labels=2), seed=0)
    batch = {"input_values": torch.zeros(2, 3), "labels": torch.tensor([0, 1]), "idx": torch.tensor([7, 8])}
    inputs = task_for(model).model_inputs(model, batch)
    assert set(inputs) == {"input_values"}  # the unused column and the targets are dropped


def test_loss_and_predict_match_a_hand_computation():
    torch.manual_seed(0)
    model = build_model(StarMLPConfig(input_size=3, hidden_sizes=[4], num_labels=3), seed=1)
    x, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, -100])
    task = task_for(model)
    logits = model(input_values=x).logits.double()
    # -log softmax by hand, over the four labelled examples
    hand = []
    for i in range(4):
        row = [float(v) for v in logits[i].detach()]
        hand.append(math.log(sum(math.exp(v) for v in row)) - row[int(y[i])])
    assert float(task.loss(model, {"input_values": x, "labels": y}).detach()) == pytest.approx(sum(hand) / 4, rel=1e-5)
    log_probs, targets = task.predict(model, {"input_values": x, "labels": y})
    assert log_probs.shape == (4, 3) and targets.tolist() == [0, 2, 1, 1]
    nll = -log_probs.double().gather(1, targets[:, None]).squeeze(1)
    assert nll.tolist() == pytest.approx(hand, rel=1e-5)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(4))


def test_builtin_models_resolve_to_their_own_classes():
    assert model_class_for(StarMLPConfig()) is StarMLPForClassification
