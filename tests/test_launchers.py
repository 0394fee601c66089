"""Launchers: a two-node run simulated on this machine (two ``accelerate launch`` commands, ``--num_machines 2
--machine_rank 0/1 --main_process_ip 127.0.0.1``, one process per node) trains the star of one node with as
many processes (same draws, same shares of the anchors)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from mp_runs import command, launch, star_of


@pytest.mark.slow
def test_two_nodes_give_the_star_of_one_node(tmp_path):
    port = 29671
    procs = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for rank in (0, 1):
        out, cmd = command(tmp_path, "nodes", 2, 3, port, launcher=["--num_machines", "2", "--machine_rank", str(rank),
                                                                       "--main_process_ip", "127.0.0.1"],
                           align_every=1)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    one, proc = launch(tmp_path, "one-node", 2, 3, 29673, align_every=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = star_of(out), star_of(one)
    assert all(torch.equal(a[n], b[n]) for n in a)
    owned = [json.loads((out / f"rank{r}.json").read_text())["owned"] for r in (0, 1)]
    assert owned == [[0, 2], [1]]
