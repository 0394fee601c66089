"""The re-alignment schedule (``align_schedule``): the rule by hand, and in a run.

Adaptive: an anchor whose permutation did not change at its last re-alignment waits twice as long (up to 8 ×
``align_every``); one that changed is back to every ``align_every``-th epoch. In a run, the anchors re-aligned
at each epoch are exactly those the rule names given the permutations each re-alignment found; a resumed
adaptive run gives the uninterrupted star.
"""

from __future__ import annotations

import torch

from star_merge.data import load_task_dataset
from star_merge.starlight.schedule import AlignSchedule

from fixtures import build_model, crash_before_batch, make_trainer, tiny_arguments, SimulatedCrash


def test_the_adaptive_rule_by_hand():
    s = AlignSchedule("adaptive", 2, align_every=1, max_interval=4)
    assert s.due(0) == [0, 1]
    s.record(0, 0, changed=True)
    s.record(0, 1, changed=False)  # waits 2 epochs
    assert s.due(1) == [0]
    s.record(1, 0, changed=False)  # waits 2
    assert s.due(2) == [1]
    s.record(2, 1, changed=False)  # waits 4
    assert s.due(3) == [0]
    s.record(3, 0, changed=False)  # waits 4
    assert s.due(4) == [] and s.due(5) == []
    assert s.due(6) == [1]
    s.record(6, 1, changed=False)  # capped at 4
    assert s.next[1] == 10
    assert s.due(7) == [0]
    s.record(7, 0, changed=True)  # back to every epoch
    assert s.due(8) == [0]
    every2 = AlignSchedule("adaptive", 1, align_every=2)
    every2.record(0, 0, changed=False)
    assert every2.due(2) == [] and every2.due(3) == [] and every2.due(4) == [0]  # stays on the grid
    fixed = AlignSchedule("fixed", 3, align_every=2)
    fixed.record(0, 1, changed=False)
    assert fixed.due(2) == [0, 1, 2] and fixed.due(3) == []
    restored = AlignSchedule("adaptive", 2, align_every=1, max_interval=4)
    restored.load_state_dict(s.state_dict())
    assert restored.next == s.next and restored.interval == s.interval


def _run(tmp_path, name, **overrides):
    config, data_args, pop, _ = tiny_arguments(str(tmp_path / name), num_train_epochs=6, align_schedule="adaptive",
                                               star_ce_weight=0.0, **overrides)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    anchors = [(f"a{i}", build_model(model_config, 40 + i).state_dict()) for i in range(4)]
    return config, model_config, anchors, dataset


def test_an_adaptive_run_realigns_what_the_rule_names(tmp_path, monkeypatch):
    config, model_config, anchors, dataset = _run(tmp_path, "run")
    trainer = make_trainer(config, model_config, anchors, dataset)
    seen = []  # (epoch, anchor, changed) of every re-alignment applied during training
    original = trainer.align_anchors

    def spy(theta, state, progress, found=None, anchors=None):
        out = original(theta, state, progress, found=found, anchors=anchors)
        if trainer.state.epoch < config.num_train_epochs:
            seen.append((trainer.state.epoch, out))
        return out

    monkeypatch.setattr(trainer, "align_anchors", spy)
    result = trainer.train()
    rule = AlignSchedule("adaptive", 4, 1)
    for epoch, out in seen:
        assert sorted(i for i, _ in out) == rule.due(epoch), (epoch, out)
        for i, changed in out:
            rule.record(epoch, i, changed)
    aligned = [h["aligned"] for h in result.history]
    assert aligned[0] == 4 and sum(aligned) < 4 * config.num_train_epochs, aligned  # some were skipped
    assert all("align_seconds" in h for h in result.history if h["aligned"])


def test_a_resumed_adaptive_run_gives_the_same_star(tmp_path, monkeypatch):
    config, model_config, anchors, dataset = _run(tmp_path, "whole")
    whole = make_trainer(config, model_config, anchors, dataset).train().model.state_dict()
    config, model_config, anchors, dataset = _run(tmp_path, "crashed", checkpointing_steps=5)
    crash_before_batch(monkeypatch, 3, 4)
    try:
        make_trainer(config, model_config, anchors, dataset).train()
    except SimulatedCrash:
        pass
    monkeypatch.undo()
    config.resume_from_checkpoint = "latest"
    resumed = make_trainer(config, model_config, anchors, dataset).train().model.state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
