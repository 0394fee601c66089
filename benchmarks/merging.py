"""Our ``merge_models(method="mergemany")`` against ``rebasin==0.0.47``'s ``MergeMany`` on the same 5 members.

    pip install --no-deps rebasin==0.0.47 torchview graphviz   # the `bench` extra; optional
    python benchmarks/merging.py                  # star-mlp 40-256-256-10 and star-cnn1d 32-64-64, 5 members each
    python benchmarks/merging.py --epochs 3       # quicker members

Members are trained here on MNIST-1D (seeds 0..4, ``--epochs`` epochs, lr 2e-3). Both merges start from the same
members; rebasin's is run as its docs show (``MergeMany(models, working_model, input_data).run()``, torch's
global RNG seeded per model family). Merged models are scored on the test split; BatchNorm statistics of either
merge are recomputed over the train split first (rebasin's docs recommend it; its mean averages parameters
only). Wall time covers the merge itself (ours: ``merge_models``; rebasin: ``MergeMany(...)`` and ``run()``).
One torch thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import copy
import time


def train_members(model_type, config, dataset, n, epochs):
    from star_merge.modeling import build_model
    from star_merge.population.training import TrainArguments, train_classifier

    out = []
    for seed in range(n):
        model = build_model(config, seed=seed)
        model, _ = train_classifier(model, dataset, TrainArguments(num_train_epochs=epochs, learning_rate=2e-3),
                                    seed=seed, progress=False)
        out.append(model.eval())
    return out


def score(model, dataset):
    from star_merge.batchnorm import has_batchnorm, reset_bn_stats
    from star_merge.data import make_dataloader
    from star_merge.evaluation.engine import evaluate_loss_accuracy

    if has_batchnorm(model):
        reset_bn_stats(model, make_dataloader(dataset["train"], 256))
    return evaluate_loss_accuracy(model.eval(), make_dataloader(dataset["test"], 512))


def ours(members):
    from star_merge import merge_models

    start = time.perf_counter()
    sd, record = merge_models(members, method="mergemany", seed=0)
    seconds = time.perf_counter() - start
    model = copy.deepcopy(members[0])
    model.load_state_dict(sd)
    return model, seconds, record.iterations


def theirs(members, x):
    import torch
    from rebasin import MergeMany

    models = [copy.deepcopy(m) for m in members]  # rebasin modifies them in place
    torch.manual_seed(0)
    start = time.perf_counter()
    merged = MergeMany(models, copy.deepcopy(members[0]), x).run()
    return merged, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from star_merge.data import DataArguments, load_task_dataset
    from star_merge.matching.merge import average_state_dicts
    from star_merge.models import StarCNN1dConfig, StarMLPConfig

    torch.set_num_threads(args.threads)
    dataset = load_task_dataset(DataArguments())
    x = torch.as_tensor(dataset["train"][:4]["input_values"], dtype=torch.float32)
    families = {"star-mlp": StarMLPConfig(hidden_sizes=[256, 256]), "star-cnn1d": StarCNN1dConfig(channels=[32, 64, 64])}
    rows = []
    for name, config in families.items():
        print(f"{name}: training {args.members} members ({args.epochs} epochs) ...", flush=True)
        members = train_members(name, config, dataset, args.members, args.epochs)
        member_scores = [score(copy.deepcopy(m), dataset) for m in members]
        naive = copy.deepcopy(members[0])
        naive.load_state_dict(average_state_dicts([m.state_dict() for m in members], [1 / len(members)] * len(members)))
        model, s_ours, sweeps = ours(members)
        rows.append((name, "members (mean)", sum(l for l, _ in member_scores) / len(members),
                     sum(a for _, a in member_scores) / len(members), None))
        rows.append((name, "naive average", *score(naive, dataset), None))
        rows.append((name, f"star-merge mergemany ({sweeps} sweeps)", *score(model, dataset), s_ours))
        try:
            merged, s_theirs = theirs(members, x)
            rows.append((name, "rebasin 0.0.47 MergeMany", *score(merged, dataset), s_theirs))
        except Exception as e:  # noqa: BLE001  (third-party research code: say why, keep our figures)
            rows.append((name, f"rebasin failed: {type(e).__name__}: {str(e)[:80]}", float("nan"), float("nan"), None))
        for r in rows[-4:]:
            print(r, flush=True)
    print()
    print(f"| model | merge | test loss | test acc | seconds |\n| --- | --- | --- | --- | --- |")
    for name, label, loss, acc, seconds in rows:
        print(f"| {name} | {label} | {loss:.4f} | {100 * acc:.2f}% | {'—' if seconds is None else f'{seconds:.2f}'} |")


if __name__ == "__main__":
    main()
