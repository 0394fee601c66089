"""README.md's Python snippet runs as written, and what it prints is the barrier of B aligned to A."""

import contextlib
import io
import math
import os
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_snippet() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## In Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_snippet_runs_as_written():
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_snippet(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    loss_barrier, accuracy_barrier = (float(v) for v in out.getvalue().split())
    curve, model_b, b_aligned, x = (namespace[k] for k in ("curve", "model_b", "b_aligned", "x"))
    assert math.isfinite(loss_barrier) and loss_barrier >= 0 and 0 <= accuracy_barrier <= 1
    assert (loss_barrier, accuracy_barrier) == (curve.loss_barrier, curve.accuracy_barrier)
    assert len(curve.losses) == 11
    # B aligned to A is the same function as B (a permutation), and its curve ends at B's loss on the data
    aligned = type(model_b)(model_b.config)
    aligned.load_state_dict(b_aligned)
    with torch.no_grad():
        logits_b, logits_aligned = model_b.eval()(input_values=x).logits, aligned.eval()(input_values=x).logits
    assert torch.allclose(logits_b, logits_aligned, atol=1e-5)
    y = namespace["y"]
    assert curve.losses[-1] == pytest.approx(torch.nn.functional.cross_entropy(logits_b, y).item(), abs=1e-5)
