"""Under a launcher: a user error is one line and exit 2 (no Accelerate traceback), and killing the launcher
ends the training process (no orphan)."""

import os
import signal
import subprocess
import sys
import time

from mp_runs import ROOT, alive

LAUNCH = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_user_error_under_the_launcher_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "star_merge.launch", *LAUNCH, os.path.join(ROOT, "recipes", "star.py"),
                           "--num_anchors", "0", "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: num_anchors"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr
    assert not out.exists()


def test_killing_accelerate_launch_ends_the_training_process(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH, os.path.join(ROOT, "recipes", "star.py"),
           "--num_samples", "1000", "--population_epochs", "500", "--num_anchors", "1", "--num_held_out", "0",
           "--output_dir", str(out)]
    launcher = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out / ".star-merge.lock"
    worker = None
    try:
        deadline = time.time() + 240
        while worker is None and time.time() < deadline and launcher.poll() is None:
            text = lock.read_text() if lock.exists() else ""
            if text.startswith("process "):
                worker = int(text.split()[1])
            time.sleep(0.5)
        assert worker is not None and worker != launcher.pid, "the training process never started"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 60
        while alive(worker) and time.time() < deadline:
            time.sleep(0.5)
        assert not alive(worker), "the training process outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_misspelled_flag_is_one_line_exit_2_with_the_closest_flag(tmp_path):
    """Under python -m star_merge.launch: a script flag and a launcher flag, each misspelled (was: a ~60-line usage
    dump, the error, Accelerate's CalledProcessError traceback and exit 1)."""
    out = tmp_path / "out"
    script = os.path.join(ROOT, "recipes", "star.py")
    for argv, hint in (([*LAUNCH, script, "--num_train_epoch", "5", "--output_dir", str(out)], "--num_train_epochs"),
                       (["--num_proceses", "1", script, "--output_dir", str(out)], "--num_processes")):
        proc = subprocess.run([sys.executable, "-m", "star_merge.launch", *argv], capture_output=True, text=True,
                              timeout=300, cwd=str(tmp_path))
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
        assert f"(did you mean {hint}?)" in lines[0]
        assert "usage:" not in proc.stderr and "Traceback" not in proc.stderr
        assert not out.exists()


def test_parser_errors_are_user_errors_with_a_hint():
    import pytest

    from star_merge.argparsing import ArgumentsParser, ConfigError
    from star_merge.errors import flag_hint
    from star_merge.starlight import StarlightConfig

    parser = ArgumentsParser([StarlightConfig], prog="recipes/star.py")
    with pytest.raises(ConfigError, match=r"unrecognized arguments: --learning_rat 1 \(did you mean --learning_rate\?\)"):
        parser.parse(["--learning_rat", "1"])
    with pytest.raises(ConfigError, match="invalid int value"):
        parser.parse(["--num_train_epochs", "many"])
    assert flag_hint("unrecognized arguments: --zzzzqq", ["--num_train_epochs"]) == ""
    assert flag_hint("unrecognized arguments: --seeds=3", ["--seed", "--num_train_epochs"]) == " (did you mean --seed?)"
