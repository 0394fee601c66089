"""star-merge's expected calibration error as an ``evaluate`` module: ``evaluate.load(star_merge.metric_path("ece"))``
(config ``"tokens"``: per token). Returns ``{"ece": top-label ECE over n_bins equal-width bins}``."""

import evaluate

from .calibration import ece, info, units


class ECE(evaluate.Metric):
    def _info(self):
        return info(self, "Top-label expected calibration error over equal-width confidence bins [k/n, (k+1)/n).",
                    "n_bins: number of bins (default 15, the report's).")

    def _compute(self, predictions, references, n_bins: int = 15):
        return {"ece": ece(*units(predictions, references, self.config_name == "tokens"), n_bins)}
