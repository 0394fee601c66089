"""``StarlightTrainer.push_to_hub``: the trained star through the one publishing path (:mod:`.publish`), with a
model card whose model-index holds the star's loss and accuracy on the trainer's ``eval_dataset``."""

from __future__ import annotations

import os
import tempfile

from .publish import local_roots, publish_files

__all__ = ["push_trainer_star", "trainer_card"]


def _eval_scores(trainer) -> dict[str, float]:
    """The star's mean loss and accuracy on ``trainer.eval_dataset`` (empty without one)."""
    if trainer.eval_dataset is None:
        return {}
    from ..data import make_dataloader
    from ..evaluation.engine import evaluate_loss_accuracy

    loader = make_dataloader(trainer.eval_dataset, trainer.args.per_device_eval_batch_size,
                             collate_fn=trainer.data_collator)
    loss, acc = evaluate_loss_accuracy(trainer.result.model, loader, device="cpu", task=trainer.task)
    return {"loss": loss, "accuracy": acc}


def trainer_card(trainer, repo_id: str) -> str:
    """The trained star's model card: what it is, its training history and (model-index) evaluation."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from ..tasks import pipeline_tag_for

    model = trainer.result.model
    arch = type(model).__name__
    tag = pipeline_tag_for(arch) or "text-classification"
    scores = _eval_scores(trainer)
    results = [EvalResult(task_type=tag, dataset_type="eval_dataset", dataset_name="eval_dataset",
                          dataset_split="eval", metric_type=k, metric_name=f"Eval {k} (star)", metric_value=float(v))
               for k, v in scores.items()]
    data = ModelCardData(library_name="transformers", tags=["star-merge", "starlight", "model-merging"],
                         pipeline_tag=pipeline_tag_for(arch), model_name=repo_id, eval_results=results or None)
    last = (trainer.result.history or [{}])[-1]
    body = [f"# {repo_id.split('/')[-1]}: a Starlight star model", "",
            f"A `{arch}` star model of {len(trainer.anchor_names)} anchors, learned with Starlight "
            "(Sonthalia et al., ICLR 2025) by [star-merge](https://pypi.org/project/star-merge/): linearly "
            "connected with low loss to its anchors modulo neuron permutations. An ordinary checkpoint of the "
            "anchors' architecture.", "",
            f"Trained {len(trainer.result.history)} epochs; last train loss {last.get('train_loss', float('nan')):.4f}."]
    body += [f"Eval {k}: {v:.4f}." for k, v in scores.items()] or ["No eval_dataset was given: no evaluation."]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"))


def push_trainer_star(trainer, repo_id: str, *, private: bool = False, token=None,
                      commit_message: str = "Upload Starlight star model") -> str:
    """Save the trained star (:meth:`save_model`), stage it with its card and upload it; the commit url."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = trainer.save_model(os.path.join(tmp, "star"))
        files = [(name, os.path.join(folder, name)) for name in sorted(os.listdir(folder)) if name != "README.md"]
        base = trainer.args.output_dir or folder
        return publish_files(repo_id, files + [("README.md", None)], trainer_card(trainer, repo_id), base,
                             private=private, token=token, commit_message=commit_message,
                             roots=local_roots(trainer.args.output_dir, tmp))
