"""Launchers: a two-node run simulated on this machine (two ``accelerate launch`` commands, ``--num_machines 2
--machine_rank 0/1 --main_process_ip 127.0.0.1``, one process per node: two per node on two shared cores is too
slow) trains the star a hand computation gives for two processes from the same draws, with the anchors sharded
across the nodes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from mp_runs import command, star_of
from test_starlight_distributed import reference_star


@pytest.mark.slow
def test_two_nodes_train_the_reference_star(tmp_path):
    port = 29671
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for rank in (0, 1):
        out, cmd = command(tmp_path, "nodes", 2, 3, port, launcher=["--num_machines", "2", "--machine_rank", str(rank),
                                                                       "--main_process_ip", "127.0.0.1"],
                           align_every=0)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    star, ref = star_of(out), reference_star(2, 3)
    for n, v in ref.items():
        torch.testing.assert_close(star[n], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")
    owned = [json.loads((out / f"rank{r}.json").read_text())["owned"] for r in (0, 1)]
    assert owned == [[0, 2], [1]]
