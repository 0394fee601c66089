"""Starlight started from anchor 0 (``--init anchor``) vs from the anchors' free merge (``--init merge``).

    python benchmarks/init_merge.py /work/demo-merge --epochs 10

Trains a star from RUN's anchors twice with the demo recipe's settings (lr 4e-3, Beta(2,2) t, μ = 0.2,
``--epochs`` epochs instead of 60), once per init, and prints for each: θ0's and the star's test loss and
accuracy, and the star's mean test-loss barrier to RUN's held-out models (weight matching, BatchNorm statistics
recomputed at every point), and the seconds of training (the merge included for ``merge``).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--inits", nargs="+", default=["anchor", "merge"])
    args = parser.parse_args(argv)
    import tempfile

    from star_merge.batchnorm import has_batchnorm, reset_bn_stats
    from star_merge.data import make_dataloader
    from star_merge.evaluation.barrier import measure_barrier
    from star_merge.evaluation.engine import evaluate_loss_accuracy
    from star_merge.rundir import RunDirectory
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    run = RunDirectory(args.run_dir)
    dataset, _ = run.load_data()
    anchors = [(m.name, run.load_member(m.name).state_dict()) for m in run.anchors]
    test = make_dataloader(dataset["test"], 512)
    for init in args.inits:
        with tempfile.TemporaryDirectory() as tmp:
            config = StarlightConfig(output_dir=tmp, num_train_epochs=args.epochs, learning_rate=4e-3, optimizer="adamw",
                                     init=init, star_ce_weight=0.2, t_sampling="beta", t_beta=2.0, seed=0)
            start = time.perf_counter()
            trainer = StarlightTrainer(model=run.load_star().config, args=config, anchors=anchors,
                                       train_dataset=dataset["train"])
            theta0 = trainer.model.__class__(trainer.model.config)
            theta0.load_state_dict(trainer.model.state_dict())
            if has_batchnorm(theta0):
                reset_bn_stats(theta0, make_dataloader(dataset["train"], 256))
            star = trainer.train().model
            seconds = time.perf_counter() - start
        loss0, acc0 = evaluate_loss_accuracy(theta0.eval(), test)
        loss, acc = evaluate_loss_accuracy(star.eval(), test)
        barriers = [measure_barrier(star, run.load_member(h.name), dataset, splits=("test",), progress=False)
                    .curves["test"].loss_barrier for h in run.held_out]
        print(f"init={init}: θ0 test loss {loss0:.4f} acc {100 * acc0:.2f}% -> star test loss {loss:.4f} "
              f"acc {100 * acc:.2f}%, held-out test-loss barrier {statistics.fmean(barriers):.4f}, {seconds:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
