"""Faults at scale (two CPU processes, gloo): a user error on one process is one line and exit 2 for the whole
run, with no traceback from any process; a process killed outright ends the other within 60 s.

(SIGTERM -> checkpoint -> exit 143 -> exact resume: tests/test_starlight_distributed.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fixtures import build_model, save_checkpoint, tiny_arguments
from mp_runs import ROOT, alive, command


@pytest.mark.slow
def test_a_bad_member_under_two_processes_is_one_line_and_exit_2(tmp_path):
    """The member check fails on process 0 (it resolves the population first, the other waits): one line."""
    _, _, pop, _ = tiny_arguments(None)
    _, _, other, _ = tiny_arguments(None, model_config='{"hidden_sizes": [16, 16]}')
    good = [save_checkpoint(build_model(pop.build_config(), s), str(tmp_path / f"good{s}")) for s in (1, 2)]
    bad = save_checkpoint(build_model(other.build_config(), 3), str(tmp_path / "bad"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "star_merge.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
           "29661", os.path.join(ROOT, "recipes", "star.py"), "--anchors", good[0], bad, "--held_out", good[1],
           "--dataset_name", "mnist1d", "--num_samples", "1000", "--output_dir", str(out)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "bad" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_killed_process_ends_the_other_within_60_s(tmp_path):
    """Process 1 is SIGKILLed after its 3rd step; process 0 notices at its next collective and exits with
    one line saying so (the launcher may also stop it), well within 60 s."""
    out, cmd = command(tmp_path, "run", 2, 3, 29663, align_every=0, num_train_epochs=50)
    env = dict(os.environ, OMP_NUM_THREADS="1", STAR_MERGE_KILL_AT="starlight:3", STAR_MERGE_FAULT_RANK="1")
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 400
        while not (out / "pid1").exists() or not (out / "pid0").exists():
            assert time.time() < deadline and launcher.poll() is None, "the processes never started"
            time.sleep(0.2)
        time.sleep(0.5)  # the files are written before they are complete
        pids = [int((out / f"pid{r}").read_text()) for r in (0, 1)]
        while alive(pids[1]):
            assert time.time() < deadline, "process 1 was never killed"
            time.sleep(0.1)
        killed = time.time()
        while alive(pids[0]) and time.time() < killed + 60:
            time.sleep(0.2)
        assert not alive(pids[0]), "process 0 outlived the killed process by 60 s"
        _, stderr = launcher.communicate(timeout=120)
        assert launcher.returncode != 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for r in (0, 1):
            p = out / f"pid{r}"
            if p.exists() and alive(int(p.read_text() or 0)):
                os.kill(int(p.read_text()), 9)
    assert not (out / "star.safetensors").exists()
