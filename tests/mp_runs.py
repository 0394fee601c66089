"""Multi-process Starlight runs for the tests: a worker script under ``accelerate launch`` (CPU processes, gloo).

The worker trains a star-mlp star on the tiny MNIST-1D subset over ``n_anchors`` random-init anchors (seeds
30, 31, ...), SGD at a constant rate, and writes ``star.safetensors`` and ``perms.safetensors`` (main process),
``rank{r}.json`` (the anchors each process holds) and ``pid{r}`` (written before training starts); with
``variants`` (a list of settings dicts) it trains again with each, cumulatively, into ``star-{k}.safetensors`` and ``perms-{k}.safetensors``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR, BATCH, EPOCHS = 0.05, 50, 2

WORKER = """
import json, os, sys
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from fixtures import build_model, tiny_arguments, make_trainer
from star_merge.data import load_task_dataset
from star_merge.errors import run_reporting_user_errors
out, n_anchors, settings = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
variants = settings.pop("variants", [])
def main():
    options = dict(num_train_epochs={epochs}, optimizer="sgd", lr_scheduler_type="constant", learning_rate={lr},
                   star_ce_weight=0.0, per_device_train_batch_size={batch})
    config, data_args, pop, _ = tiny_arguments(settings.pop("output_dir", None), **{{**options, **settings}})
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    anchors = [(f"a{{i}}", build_model(model_config, 30 + i).state_dict()) for i in range(n_anchors)]
    trainer = make_trainer(config, model_config, anchors, dataset)
    with open(os.path.join(out, f"pid{{trainer.accelerator.process_index}}"), "w") as f:
        f.write(str(os.getpid()))
    result = trainer.train()
    acc = trainer.accelerator
    info = {{"rows": trainer.anchors.shape[0], "owned": trainer.store.owned, "sharded": trainer.store.sharded}}
    with open(os.path.join(out, f"rank{{acc.process_index}}.json"), "w") as f:
        json.dump(info, f)
    for k, variant in enumerate(variants):  # the same run again, with these settings changed
        for name, value in variant.items():
            setattr(config, name, value)
        again = make_trainer(config, model_config, anchors, dataset).train()
        if acc.is_main_process:
            save_file({{k: v.contiguous() for k, v in again.model.state_dict().items()}},
                      os.path.join(out, f"star-{{k}}.safetensors"))
            save_file({{f"{{a}}/{{p}}": v for a, d in again.perms.items() for p, v in d.items()}},
                      os.path.join(out, f"perms-{{k}}.safetensors"))
    if acc.is_main_process:
        save_file({{k: v.contiguous() for k, v in result.model.state_dict().items()}}, os.path.join(out, "star.safetensors"))
        perms = {{f"{{a}}/{{p}}": v for a, d in result.perms.items() for p, v in d.items()}}
        save_file(perms, os.path.join(out, "perms.safetensors"))
run_reporting_user_errors(main)
"""


def command(tmp, name, processes, n_anchors, port, launcher=(), **settings):
    """(output folder, the ``accelerate launch`` command line running the worker on ``processes`` CPU processes
    in all; ``launcher``: more launcher flags, e.g. ``--num_machines``)."""
    out = tmp / name
    out.mkdir(exist_ok=True)
    script = tmp / "worker.py"
    script.write_text(WORKER.format(tests=os.path.join(ROOT, "tests"), epochs=EPOCHS, lr=LR, batch=BATCH))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           *launcher, "--main_process_port", str(port), str(script), str(out), str(n_anchors), json.dumps(settings)]
    return out, cmd


def launch(tmp, name, processes, n_anchors, port, env=None, **settings):
    """Run the worker under ``accelerate launch``; returns (folder, completed process)."""
    out, cmd = command(tmp, name, processes, n_anchors, port, **settings)
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})), capture_output=True,
                          text=True, timeout=600)
    return out, proc


def star_of(folder):
    from safetensors.torch import load_file

    return load_file(folder / "star.safetensors")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (read from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
