"""The Starlight update against references computed without the trainer's machinery.

One SGD step over one batch is compared with the update derived by hand: the loss at
``w = (1-t)·θ + t·anchor`` differentiated by autograd through an explicit interpolation of ordinary
state dicts (``torch.func.functional_call``), times Nesterov SGD's first-step factor ``1 + momentum``.
Gradient accumulation is compared with one batch k times larger, and two processes with one process
holding the same global batch (the gradient must be all-reduced and averaged, not taken from one rank).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call

import star_merge  # noqa: F401  (registers the built-in models with the Auto classes)
from star_merge.data import load_task_dataset

from fixtures import build_model, save_checkpoint, tiny_arguments, train_star

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.05
MOMENTUM = 0.9  # StarlightConfig(optimizer="sgd") is Nesterov SGD with momentum 0.9 (its documented setting)


def _setup(tmp_path, model_type="star-mlp", **overrides):
    """Config, model config, dataset, the star's initial state dict θ0 and one anchor state dict."""
    settings = dict(num_train_epochs=1, optimizer="sgd", lr_scheduler_type="constant", learning_rate=LR,
                    weight_decay=0.0, t_sampling="constant", star_ce_weight=0.0, align_every=0)
    settings.update(overrides)
    config, data_args, pop, _ = tiny_arguments(None, model_type, **settings)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    init = build_model(model_config, 21)
    config.init = save_checkpoint(init, str(tmp_path / "init"))  # θ0 is known here, not taken from the trainer
    anchor = build_model(model_config, 22).state_dict()
    return config, model_config, dataset, init.state_dict(), anchor


def _reference_step(model_config, theta0, anchor, dataset, t, mu=0.0, batch=None):
    """(θ after one Nesterov-SGD step, loss at the interpolated point) over the whole ``batch``."""
    model = build_model(model_config, 0).train()  # a container: its own weights are never used
    names = [n for n, _ in model.named_parameters()]
    buffers = {k: v.clone() for k, v in theta0.items() if k not in names}
    theta = {n: theta0[n].clone().requires_grad_(True) for n in names}
    rows = dataset["train"].with_format("torch")[:] if batch is None else batch
    x, y = rows[model.main_input_name], rows["labels"]

    def loss_at(params):
        logits = functional_call(model, {**params, **{k: v.clone() for k, v in buffers.items()}},
                                 kwargs={model.main_input_name: x}).logits
        return torch.nn.functional.cross_entropy(logits, y)

    point = {n: (1 - t) * theta[n] + t * anchor[n] for n in names}  # explicit, no lerp, no flat buffers
    loss = loss_at(point)
    total = loss + mu * loss_at(theta) if mu else loss
    grads = torch.autograd.grad(total, [theta[n] for n in names])
    new = {n: theta0[n] - LR * (1 + MOMENTUM) * g for n, g in zip(names, grads)}
    return new, float(loss.detach())


def _one_step_config(tmp_path, model_type, t, mu=0.0):
    n_train = len(load_task_dataset(tiny_arguments(None)[1])["train"])
    # one batch holding the whole train split and one epoch: exactly one optimizer step
    return _setup(tmp_path, model_type, per_device_train_batch_size=n_train, t_constant=t, star_ce_weight=mu)


@pytest.mark.parametrize(
    "model_type,t,mu",
    [("star-mlp", 0.3, 0.0), ("star-mlp", 0.0, 0.0), ("star-mlp", 0.7, 0.5), ("star-cnn1d", 0.4, 0.0)],
)
def test_one_step_matches_the_autograd_reference(tmp_path, model_type, t, mu):
    config, model_config, dataset, theta0, anchor = _one_step_config(tmp_path, model_type, t, mu)
    result = train_star(config, model_config, [("a0", anchor)], dataset)
    expected, loss = _reference_step(model_config, theta0, anchor, dataset, t, mu)
    star = result.model.state_dict()
    for n, w in expected.items():
        moved = star[n] - theta0[n]
        assert moved.abs().max() > 0, f"{n} did not move"
        torch.testing.assert_close(moved, w - theta0[n], rtol=2e-3, atol=2e-6, msg=lambda m: f"{n}: {m}")
    if mu == 0.0:  # the reported loss is the loss at the interpolated point
        assert result.history[0]["train_loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("model_type", ["star-mlp", "star-cnn1d"])
def test_forward_point_at_t_one_is_the_anchor(tmp_path, model_type):
    """At t=1 the network runs at the (aligned) anchor: its loss is the anchor's, θ gets no gradient."""
    config, model_config, dataset, theta0, anchor = _one_step_config(tmp_path, model_type, 1.0)
    config.align_every = 1  # the anchor is aligned to θ first; a permutation does not change its loss
    result = train_star(config, model_config, [("a0", anchor)], dataset)
    _, anchor_loss = _reference_step(model_config, anchor, anchor, dataset, 0.0)
    _, theta_loss = _reference_step(model_config, theta0, anchor, dataset, 0.0)
    assert abs(anchor_loss - theta_loss) > 1e-3  # the two ends are distinguishable
    assert result.history[0]["train_loss"] == pytest.approx(anchor_loss, rel=1e-4)
    star = result.model.state_dict()
    assert all(torch.equal(star[n], theta0[n]) for n, _ in result.model.named_parameters())


def test_accumulation_of_k_batches_equals_one_batch_k_times_larger(tmp_path):
    config, model_config, dataset, _, anchor = _setup(tmp_path, t_constant=0.4, per_device_train_batch_size=100,
                                                      gradient_accumulation_steps=4)
    accumulated = train_star(config, model_config, [("a0", anchor)], dataset).model.state_dict()
    config.per_device_train_batch_size, config.gradient_accumulation_steps = 400, 1
    large = train_star(config, model_config, [("a0", anchor)], dataset).model.state_dict()
    config.gradient_accumulation_steps = 1
    config.per_device_train_batch_size = 100
    unaccumulated = train_star(config, model_config, [("a0", anchor)], dataset).model.state_dict()
    for k in large:
        torch.testing.assert_close(accumulated[k], large[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert any((unaccumulated[k] - large[k]).abs().max() > 1e-3 for k in large)  # the comparison can fail


RANK_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from fixtures import build_model, tiny_arguments, make_trainer
from star_merge.data import load_task_dataset
config, data_args, pop, _ = tiny_arguments(None, num_train_epochs=1, optimizer="sgd", lr_scheduler_type="constant",
                                           learning_rate={lr}, t_sampling="constant", t_constant=0.4,
                                           star_ce_weight=0.5, align_every=0, per_device_train_batch_size={batch})
dataset = load_task_dataset(data_args)
model_config = pop.build_config()
trainer = make_trainer(config, model_config, [("a0", build_model(model_config, 22).state_dict())], dataset)
star = trainer.train().model.state_dict()
acc = trainer.accelerator
if acc.is_main_process:
    save_file({{k: v.contiguous() for k, v in star.items()}}, {out!r})
"""


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    """2 processes x 50 samples per step must give the star of 1 process x 100 samples (gradients averaged)."""
    from safetensors.torch import load_file

    out = tmp_path / "star-2.safetensors"
    script = tmp_path / "train.py"
    script.write_text(RANK_SCRIPT.format(tests=os.path.join(ROOT, "tests"), lr=LR, batch=50, out=str(out)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", "29545", str(script)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_file(out)
    # the same run in this process, one process with the global batch
    config, data_args, pop, _ = tiny_arguments(None, num_train_epochs=1, optimizer="sgd", lr_scheduler_type="constant",
                                               learning_rate=LR, t_sampling="constant", t_constant=0.4,
                                               star_ce_weight=0.5, align_every=0, per_device_train_batch_size=100)
    model_config = pop.build_config()
    anchors = [("a0", build_model(model_config, 22).state_dict())]
    one = train_star(config, model_config, anchors, load_task_dataset(data_args)).model.state_dict()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
