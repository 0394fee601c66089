"""Accuracy of predicted labels as an ``evaluate`` module, for ``evaluate.evaluator(task)`` offline (the Hub's
``accuracy`` needs the network): ``evaluator.compute(..., metric=evaluate.load(star_merge.metric_path("accuracy")))``.
Returns ``{"accuracy": fraction of predictions equal to their reference}``."""

import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predicted labels equal to the reference labels.", citation="",
            inputs_description="predictions: predicted labels [N]; references: labels [N].",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        return {"accuracy": float((np.asarray(predictions) == np.asarray(references)).mean())}
