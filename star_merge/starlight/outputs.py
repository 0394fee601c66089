"""The Trainer-shaped outputs of a :class:`~star_merge.starlight.StarlightTrainer`: ``save_model``, ``push_to_hub``."""

from __future__ import annotations

__all__ = ["StarOutputs"]


class StarOutputs:
    """``save_model`` / ``push_to_hub`` of a trainer holding ``result`` (a StarlightResult, after ``train()``),
    ``args`` (its StarlightConfig) and ``processing_class``."""

    def save_model(self, output_dir: str, overwrite: bool = False) -> str:
        """Write the trained star as an HF checkpoint folder (atomically; with ``processing_class`` if given)."""
        from ..population.training import save_checkpoint

        if self.result is None:
            raise RuntimeError("nothing to save yet: call train() first")
        out = save_checkpoint(self.result.model, output_dir, overwrite=overwrite,
                              extra_json={"history": self.result.history, "starlight": self.args.to_dict()})
        if self.processing_class is not None and hasattr(self.processing_class, "save_pretrained"):
            self.processing_class.save_pretrained(out)
        return out

    def push_to_hub(self, repo_id: str, *, private: bool = False, token=None,
                    commit_message: str = "Upload Starlight star model") -> str:
        """Upload the trained star (as :meth:`save_model` writes it) with its model card to ``repo_id`` through the
        one publishing path (``star_merge.hub.publish``: sanitised, a card, no local path); the commit url."""
        from ..hub.trainer_push import push_trainer_star

        return push_trainer_star(self, repo_id, private=private, token=token, commit_message=commit_message)
