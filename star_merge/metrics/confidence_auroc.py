"""star-merge's confidence AUROC as an ``evaluate`` module: ``evaluate.load(star_merge.metric_path(
"confidence_auroc"))`` (config ``"tokens"``: per token). Returns ``{"auroc_max_prob", "auroc_entropy"}``: how
well the top probability / the negative entropy tells right predictions from wrong ones (None if undefined)."""

import evaluate

from .calibration import confidence_auroc, info, units


class ConfidenceAUROC(evaluate.Metric):
    def _info(self):
        return info(self, "AUROC of the prediction's confidence for telling correct from wrong predictions.")

    def _compute(self, predictions, references):
        probs, labels = units(predictions, references, self.config_name == "tokens")
        return {"auroc_max_prob": confidence_auroc(probs, labels, "max_prob"),
                "auroc_entropy": confidence_auroc(probs, labels, "entropy")}
