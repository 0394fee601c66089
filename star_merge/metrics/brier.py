"""star-merge's Brier score as an ``evaluate`` module: ``evaluate.load(star_merge.metric_path("brier"))``
(config ``"tokens"``: per token). Returns ``{"brier": mean sum_c (p_c - 1[c = label])^2}``."""

import evaluate

from .calibration import brier, info, units


class Brier(evaluate.Metric):
    def _info(self):
        return info(self, "Brier score: mean over units of sum_c (p_c - 1[c = label])^2, in [0, 2].")

    def _compute(self, predictions, references):
        return {"brier": brier(*units(predictions, references, self.config_name == "tokens"))}
