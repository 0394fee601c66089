"""star-merge's negative log-likelihood as an ``evaluate`` module: ``evaluate.load(star_merge.metric_path("nll"))``
(config ``"tokens"``: per token). Returns ``{"nll": mean -log p(label) in nats}``."""

import evaluate

from .calibration import info, nll, units


class NLL(evaluate.Metric):
    def _info(self):
        return info(self, "Mean negative log-likelihood -log p(label) of predicted probabilities (nats).",
                    "eps: probabilities are clamped at eps (default 1e-12).")

    def _compute(self, predictions, references, eps: float = 1e-12):
        return {"nll": nll(*units(predictions, references, self.config_name == "tokens"), eps)}
