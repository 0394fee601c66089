"""Anchor-sharded data parallelism on gloo (CPU processes under ``accelerate launch``).

- 2 processes (5 anchors: shares of 3 and 2) and 4 processes (3 anchors: one process holds none) give the
  star of a reference computed here by hand: for each step, every process's (anchor, t) drawn from the seed
  as documented, its micro-batch taken from the seeded data order, the loss at an explicit
  ``(1-t)·θ + t·anchor`` differentiated by autograd, the gradients averaged, one Nesterov-SGD step.
- each process holds only its share of the anchor rows;
- with re-alignment, sharded and unsharded runs give the same star and permutations (same draws);
- a run killed mid-epoch and resumed gives the uninterrupted star, bit for bit; resuming it with another
  number of processes is a one-line error; SIGTERM on one process: a checkpoint, exit 143, exact resume;
- the gradient all-reduced in buckets during the backward gives the star of one all-reduce after it.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from torch.func import functional_call

import star_merge  # noqa: F401  (registers the built-in models)
from star_merge.seeding import mix_seed

from fixtures import build_model, tiny_arguments
from mp_runs import BATCH, EPOCHS, LR, launch, star_of

def draw(seed, epoch, batch, rank, num_anchors):
    """(anchor, t) of ``rank``'s micro-batch ``batch`` of ``epoch``: docs/starlight.md's rule, t ~ U(0, 1)."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, batch, rank))
    return int(torch.randint(num_anchors, (1,), generator=g)), float(torch.rand((), generator=g))


def reference_star(processes, n_anchors, seed=0):
    """The star trained by hand: per step, each process's micro-batch (the seeded order, batch ``s·W + k``
    for process ``k``), its loss at an explicit interpolation, gradients averaged, Nesterov SGD."""
    from star_merge.data import load_task_dataset

    _, data_args, pop, _ = tiny_arguments(None)
    model_config = pop.build_config()
    train = load_task_dataset(data_args)["train"].with_format("torch")
    model = build_model(model_config, seed)  # the star's init: built with the run's seed
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    anchors = [build_model(model_config, 30 + i).state_dict() for i in range(n_anchors)]
    opt = torch.optim.SGD(list(theta.values()), lr=LR, momentum=0.9, nesterov=True)
    x_all, y_all = train[:][model.main_input_name], train[:]["labels"]
    for epoch in range(EPOCHS):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch))
        for s in range(len(train) // (BATCH * processes)):
            grads = {n: torch.zeros_like(theta[n]) for n in names}
            for k in range(processes):
                idx = order[(s * processes + k) * BATCH:(s * processes + k + 1) * BATCH]
                a, t = draw(seed, epoch, s, k, n_anchors)
                point = {n: (1 - t) * theta[n] + t * anchors[a][n] for n in names}
                logits = functional_call(model, point, kwargs={model.main_input_name: x_all[idx]}).logits
                loss = torch.nn.functional.cross_entropy(logits, y_all[idx])
                for n, g in zip(names, torch.autograd.grad(loss, [theta[n] for n in names])):
                    grads[n] += g / processes
            for n in names:
                theta[n].grad = grads[n]
            opt.step()
    return {n: v.detach() for n, v in theta.items()}


@pytest.mark.slow
@pytest.mark.parametrize("processes,n_anchors,port", [(2, 5, 29611), (4, 3, 29613)])
def test_sharded_star_equals_the_hand_reference(tmp_path, processes, n_anchors, port):
    out, proc = launch(tmp_path, "run", processes, n_anchors, port, align_every=0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    star = star_of(out)
    ref = reference_star(processes, n_anchors)
    for n, v in ref.items():
        torch.testing.assert_close(star[n], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")
    start = build_model(tiny_arguments(None)[2].build_config(), 0).state_dict()
    assert any((star[n] - start[n]).abs().max() > 1e-2 for n in ref)  # it trained: the comparison can fail
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    assert [i["owned"] for i in infos] == [list(range(r, n_anchors, processes)) for r in range(processes)]
    assert [i["rows"] for i in infos] == [len(range(r, n_anchors, processes)) for r in range(processes)]
    assert all(i["sharded"] for i in infos)


@pytest.fixture(scope="module")
def aligned_runs(tmp_path_factory):
    """Two processes, 5 anchors, re-aligned every epoch: sharded (in a run directory, checkpoints every 3
    steps), then unsharded in the same processes (``star-0``); the sharded run killed at step 5 then resumed;
    and SIGTERM at step 5, then resumed."""
    tmp = tmp_path_factory.mktemp("aligned")
    common = dict(align_every=1, checkpointing_steps=3)
    runs = {}
    runs["sharded"] = launch(tmp, "sharded", 2, 5, 29621, output_dir=str(tmp / "sharded" / "run"),
                             variants=[{"anchor_sharding": "off", "output_dir": None}], **common)
    killed_dir = str(tmp / "killed" / "run")
    runs["killed"] = launch(tmp, "killed", 2, 5, 29625, env={"STAR_MERGE_KILL_AT": "starlight:5"},
                            output_dir=killed_dir, **common)
    runs["killed-star"] = (tmp / "killed" / "star.safetensors").exists()  # before the resumed run writes it
    runs["resumed"] = launch(tmp, "killed", 2, 5, 29627, output_dir=killed_dir, resume_from_checkpoint="latest",
                             **common)
    # SIGTERM to process 1 only, after step 5: both stop there with a checkpoint (and no periodic ones)
    term_dir = str(tmp / "term" / "run")
    runs["term"] = launch(tmp, "term", 2, 5, 29629, env={"STAR_MERGE_SIGTERM_AT": "starlight:5",
                                                          "STAR_MERGE_FAULT_RANK": "1"},
                          output_dir=term_dir, align_every=1)
    checkpoints = os.path.join(term_dir, "checkpoints")
    runs["term-checkpoints"] = {d: json.loads(open(os.path.join(checkpoints, d, "starlight_state.json")).read())
                                for d in sorted(os.listdir(checkpoints))} if os.path.isdir(checkpoints) else {}
    runs["term-resumed"] = launch(tmp, "term", 2, 5, 29631, output_dir=term_dir, resume_from_checkpoint="latest",
                                  align_every=1)
    return tmp, runs


@pytest.mark.slow
def test_sharded_alignment_equals_unsharded(aligned_runs):
    from safetensors.torch import load_file

    _, runs = aligned_runs
    out, proc = runs["sharded"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = star_of(out), load_file(out / "star-0.safetensors")
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")
    pa, pb = load_file(out / "perms.safetensors"), load_file(out / "perms-0.safetensors")
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(v, torch.arange(v.numel())) for v in pa.values())  # alignment did permute


@pytest.mark.slow
def test_resume_after_a_kill_is_exact_when_sharded(aligned_runs):
    _, runs = aligned_runs
    assert runs["killed"][1].returncode != 0 and not runs["killed-star"]
    assert runs["resumed"][1].returncode == 0, runs["resumed"][1].stderr[-3000:]
    assert "resumed from" in runs["resumed"][1].stdout + runs["resumed"][1].stderr
    a, b = star_of(runs["sharded"][0]), star_of(runs["resumed"][0])
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.slow
def test_resume_with_another_number_of_processes_is_one_line(aligned_runs, capsys):
    from star_merge.data import load_task_dataset
    from star_merge.errors import run_reporting_user_errors

    from fixtures import make_trainer

    tmp, runs = aligned_runs
    run_dir = str(tmp / "sharded" / "run")
    config, data_args, pop, _ = tiny_arguments(run_dir, num_train_epochs=EPOCHS, optimizer="sgd",
                                               per_device_train_batch_size=BATCH, resume_from_checkpoint="latest")
    model_config = pop.build_config()
    anchors = [(f"a{i}", build_model(model_config, 30 + i).state_dict()) for i in range(5)]
    trainer = make_trainer(config, model_config, anchors, load_task_dataset(data_args))
    assert run_reporting_user_errors(trainer.train) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by 2 process(es), this run has 1" in err[0], err
    assert not any(d.startswith("corrupt-") for d in os.listdir(os.path.join(run_dir, "checkpoints")))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_exactly(aligned_runs):
    tmp, runs = aligned_runs
    out, term = runs["term"]
    log = term.stdout + term.stderr
    assert term.returncode != 0 and re.search(r"exitcode\s*:\s*143", log), log[-3000:]
    assert "SIGTERM: checkpoint saved at epoch 0, step 5" in log, log[-3000:]
    checkpoints = runs["term-checkpoints"]
    assert list(checkpoints) == ["checkpoint_0"], checkpoints  # the SIGTERM's: no periodic ones in this run
    state = checkpoints["checkpoint_0"]
    assert (state["epoch"], state["batches_in_epoch"], state["global_step"], state["num_processes"]) == (0, 5, 5, 2)
    resumed = runs["term-resumed"][1]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = star_of(runs["sharded"][0]), star_of(out)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.slow
def test_overlapped_reduction_and_align_overlap_on_two_processes(tmp_path):
    """One launch, four runs in the same two processes (each change on top of the previous):
    1. the gradient all-reduced in buckets of ≈ 500 numbers during the backward (star + CE: two backwards per
       micro-batch; accumulation over 2 micro-batches) gives the star of one all-reduce after it, bit for bit
       (2 processes: a + b either way);
    2. with ``align_overlap`` (each process aligns its own anchors in a background thread, applied at the next
       epoch), sharded and unsharded give the same star and the same permutations."""
    from safetensors.torch import load_file

    out, proc = launch(tmp_path, "run", 2, 5, 29641, align_every=1, num_train_epochs=3, star_ce_weight=0.5,
                       gradient_accumulation_steps=2,
                       variants=[{"reduce_overlap": True, "reduce_bucket_mb": 0.002}, {"align_overlap": True},
                                 {"anchor_sharding": "off"}])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, bucketed = star_of(out), load_file(out / "star-0.safetensors")
    assert all(torch.equal(one[n], bucketed[n]) for n in one)
    sharded, unsharded = load_file(out / "star-1.safetensors"), load_file(out / "star-2.safetensors")
    for n in sharded:
        torch.testing.assert_close(sharded[n], unsharded[n], rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")
    pa, pb = load_file(out / "perms-1.safetensors"), load_file(out / "perms-2.safetensors")
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(v, torch.arange(v.numel())) for v in pa.values())
