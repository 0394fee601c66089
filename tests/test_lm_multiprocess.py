"""Language-model evaluation in 2 processes (gloo, ``Accelerator(cpu=True)`` under ``accelerate launch``) gives the
1-process numbers: per-token CE and accuracy, a per-token CE barrier, the streamed test scores and the deep
ensemble's. 7 examples in batches of 2 leave each process an uneven last batch (Accelerate pads it with
duplicated examples, dropped again by ``gather_for_metrics``); the causal rows have right padding and the masked
rows ``-100`` positions and a row with no target, none of which may be counted, nor counted twice.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lm_fixtures import confident_lms, lm_examples
from star_merge.evaluation.connectivity import interpolation_curves
from star_merge.evaluation.engine import EvalData, evaluate_loss_accuracy
from star_merge.evaluation.streaming import score_models
from star_merge.tasks import task_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from accelerate import Accelerator
from test_lm_multiprocess import measure
acc = Accelerator(cpu=True)
out = measure({kind!r}, acc)
if acc.is_main_process:
    with open({out!r}, "w") as f:
        json.dump(dict(out, num_processes=acc.num_processes, backend=str(acc.state.backend)), f)
"""


def measure(kind: str, accelerator=None) -> dict:
    """Every number of the test, with ``accelerator`` (its loaders prepared) or in this one process."""
    models = confident_lms(kind)
    task = task_for(models["m0"])
    loader = torch.utils.data.DataLoader(lm_examples(kind), batch_size=2)
    prepared = accelerator.prepare_data_loader(loader) if accelerator is not None else loader
    loss, acc = evaluate_loss_accuracy(models["m0"], prepared, task=task, accelerator=accelerator)
    data = EvalData.from_loaders({"test": prepared}, loader, accelerator)
    container = confident_lms(kind, 1)["m0"]
    curve = interpolation_curves(container, models["m0"].state_dict(), models["m1"].state_dict(), data, 3,
                                 task=task)["test"]
    stats = score_models(models, prepared, task, accelerator, {"ens": ["m0", "m1", "m2"]})
    return {"loss": loss, "accuracy": acc, "curve": curve.losses, "barrier": curve.loss_barrier,
            "labels": stats["m0"].labels.tolist(),
            "metrics": {name: s.metrics() for name, s in stats.items()}}


@pytest.mark.parametrize("kind,port", [("causal", 29561), ("masked", 29562)])
def test_two_processes_give_the_one_process_numbers(tmp_path, kind, port):
    out = tmp_path / "two.json"
    script = tmp_path / "measure.py"
    script.write_text(SCRIPT.format(tests=os.path.join(ROOT, "tests"), kind=kind, out=str(out)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(port), str(script)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())
    assert two["num_processes"] == 2 and two["backend"] == "gloo"
    one = measure(kind)

    rows = lm_examples(kind)
    targets = sum(int((r["labels"][1:] if kind == "causal" else r["labels"]).ne(-100).sum()) for r in rows)
    assert len(one["labels"]) == targets  # the reference counts every target token once
    assert two["labels"] == one["labels"]  # same tokens, same order: no duplicate, no padding, none lost
    assert math.isclose(two["loss"], one["loss"], rel_tol=1e-9) and math.isclose(two["accuracy"], one["accuracy"])
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(two["curve"], one["curve"]))
    assert math.isclose(two["barrier"], one["barrier"], rel_tol=1e-7, abs_tol=1e-9)
    assert one["barrier"] > 1e-3  # a real barrier between the two models, not 0 = 0
    for name, ref in one["metrics"].items():
        for key, value in ref.items():
            got = two["metrics"][name][key]
            assert (got is None and value is None) or math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12), (name, key)
    # and the 1-process loss is the model's own labels= loss over all rows in one batch
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        own = confident_lms(kind, 1)["m0"](**batch).loss
    assert math.isclose(one["loss"], float(own), rel_tol=1e-5)
