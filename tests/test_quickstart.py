"""docs/quickstart.md's walk from N checkpoints to a published star and BMA is examples/quickstart.sh, and the
script runs at tiny size: checkpoints, a run with star, BMA, report and cards, the push's dry run of both, and
the merged baseline with its push's dry run."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import star_merge  # noqa: F401  (registers the built-in models with the Auto classes)

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
    assert len(script) == 5 and _commands(block) == script


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
    merged = run / "merged-cycle"
    record = json.loads((merged / "star_merge_merge.json").read_text())
    assert record["method"] == "cycle" and record["repair"], record
    assert "me/quickstart-merged: " in proc.stdout and "star_merge_merge.json" in proc.stdout
    model = AutoModelForSequenceClassification.from_pretrained(merged)
    anchors = [AutoModelForSequenceClassification.from_pretrained(tmp_path / "quickstart" / "checkpoints" / name)
               for name in ("anchor-00", "anchor-01")]
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    logits = model(input_values=x).logits
    assert torch.isfinite(logits).all() and logits.shape == (8, 10)
    for anchor in anchors:  # a new model, not a copy of either member
        assert not torch.allclose(anchor(input_values=x).logits, logits)
