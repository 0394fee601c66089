"""Under a launcher: a user error is one line and exit 2 (no Accelerate traceback), and killing the launcher
ends the training process (no orphan)."""

import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.5)
        assert not _alive(worker), "the training process outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)
