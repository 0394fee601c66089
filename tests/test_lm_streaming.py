"""Streamed test-split scores (per-unit scalars, every model on each batch) equal the full-array computation.

Reference: the [tokens, vocab] probabilities of every model held whole (``engine.predict``), the deep ensemble as
their mean, scored by :func:`classification_metrics` / :func:`reliability_bins`; and the models' own ``labels=``
loss for the NLL. Batches are uneven (7 examples in batches of 3) and the masked LM has ``-100`` positions and
an example with no target at all.
"""

from __future__ import annotations

import math

import pytest
import torch

from lm_fixtures import confident_lms as _models
from lm_fixtures import lm_examples as _examples
from star_merge.evaluation.engine import predict
from star_merge.evaluation.metrics import classification_metrics, expected_calibration_error, reliability_bins
from star_merge.evaluation.streaming import UnitStats, score_models
from star_merge.tasks import task_for


def _loader(rows, batch_size):
    return torch.utils.data.DataLoader(rows, batch_size=batch_size)


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_streamed_metrics_equal_the_full_array_computation(kind):
    models = _models(kind)
    task = task_for(next(iter(models.values())))
    rows = _examples(kind)
    streamed = score_models(models, _loader(rows, 3), task, ensembles={"ens": ["m0", "m1", "m2"]})

    full = {name: predict(m, _loader(rows, 7), task=task, progress=False) for name, m in models.items()}
    labels = full["m0"].labels
    probs = {name: p.probs for name, p in full.items()}
    probs["ens"] = (probs["m0"] + probs["m1"] + probs["m2"]) / 3  # the mean softmax, by hand
    n_targets = sum(int((r["labels"] != -100).sum()) for r in rows) - (7 if kind == "causal" else 0)
    assert labels.numel() == n_targets  # no padding / -100 position counted, none twice (causal: 1 less per row)
    for name, p in probs.items():
        got, ref = streamed[name], classification_metrics(p, labels)
        assert torch.equal(got.labels, labels)
        assert got.metrics().keys() == ref.keys()
        for key, value in ref.items():
            if value is None:
                assert got.metrics()[key] is None
            else:
                assert math.isclose(got.metrics()[key], value, rel_tol=1e-12, abs_tol=1e-12), (name, key)
        assert got.reliability_bins() == reliability_bins(p, labels)
        assert got.ece() == expected_calibration_error(p, labels)
        assert torch.equal(got.predictions, p.argmax(-1))
    m = streamed["m0"].metrics()
    assert 0 < m["accuracy"] < 1 and m["ece"] > 0.05  # the comparison is not between trivial values

    # an independent reference for the NLL: the model's own labels= loss over all examples in one batch
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        own = models["m1"](**batch).loss
    assert math.isclose(streamed["m1"].metrics()["nll"], float(own), rel_tol=1e-5)


def test_ensemble_is_the_mean_of_the_members_softmax_per_token():
    models = _models("causal", 2)
    task = task_for(models["m0"])
    rows = _examples("causal", n=4)
    s = score_models(models, _loader(rows, 4), task, ensembles={"pair": ["m0", "m1"]})
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        p = [m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.softmax(-1)[:, :-1]
             for m in models.values()]
    target = batch["labels"][:, 1:]
    keep = target != -100
    mean = ((p[0] + p[1]) / 2)[keep]
    hand_nll = -mean.gather(1, target[keep][:, None]).log().mean()
    assert math.isclose(s["pair"].metrics()["nll"], float(hand_nll), rel_tol=1e-5)


def test_unit_stats_from_probs_refuses_what_classification_metrics_refuses():
    from star_merge.evaluation.metrics import MetricError

    with pytest.raises(MetricError, match="sum to 1"):
        UnitStats.from_probs(torch.full((2, 3), 0.5), torch.tensor([0, 1]))
    with pytest.raises(MetricError, match="0 samples"):
        UnitStats.from_probs(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
