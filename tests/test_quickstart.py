"""docs/quickstart.md's walk from N checkpoints to a published star and BMA is examples/quickstart.sh, and the
script runs at tiny size: checkpoints, a run with star, BMA, report and cards, and the push's dry run of both."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "quickstart.sh")


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and not line.startswith("set ")]


def test_the_quickstart_shows_the_commands_the_example_runs():
    doc = open(os.path.join(ROOT, "docs", "quickstart.md")).read()
    section = doc[doc.index("## From N checkpoints to a published star"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    script = _commands(open(SCRIPT).read())
    assert len(script) == 3 and _commands(block) == script


@pytest.mark.slow
def test_the_quickstart_example_runs_at_tiny_size(tmp_path):
    for folder in ("recipes", "examples"):
        os.symlink(os.path.join(ROOT, folder), tmp_path / folder)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["bash", SCRIPT], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "quickstart" / "run"
    for entry in ("star/model.safetensors", "bma/model.safetensors", "report.json", "report.md", "README.md"):
        assert (run / entry).is_file(), entry
    assert "me/quickstart-star: " in proc.stdout and "me/quickstart-star-bma: " in proc.stdout  # both repos planned
    assert "nothing uploaded" in proc.stdout
