"""Train a population: N anchors and M held-out models of one architecture, one seed each, as HF checkpoints.

    # the demo's population (10 anchors + 5 held-out star-cnn1d models on MNIST-1D)
    python recipes/train_population.py --output_dir outputs/population

    # a BatchNorm CNN population from a config; re-running skips members already trained
    python recipes/train_population.py --config recipes/configs/mnist1d_cnn1d.yaml --output_dir outputs/cnn-pop

Anchor i is trained with seed population_seed + i, held-out model j with population_seed + 1000 + j.
Use the folders as `--anchors`/`--held_out` of recipes/star.py, or push them to the Hub.
"""

import os
import sys

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "mnist1d_cnn1d_demo.yaml")


def main(argv=None) -> int:
    from star_merge.errors import run_reporting_user_errors
    from star_merge.launch import die_with_parent, under_launcher

    if under_launcher():
        die_with_parent()  # killing `accelerate launch` ends this process too
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", DEFAULT_CONFIG, *argv]
    return run_reporting_user_errors(lambda: _run(argv))


def _run(argv) -> int:
    from star_merge.argparsing import ArgumentsParser
    from star_merge.data import DataArguments, load_task_dataset
    from star_merge.tasks import check_labels
    from star_merge.locking import lock_output_dir, recover_atomic_leftovers
    from star_merge.population import train_population
    from star_merge.starlight import StarlightConfig
    from star_merge.population import PopulationArguments
    from star_merge.pipeline import RunArguments

    # The recipe configs also carry Starlight/run settings: parse them all (so the same YAML files work
    # here), use the data and population parts; --output_dir is the population folder.
    parser = ArgumentsParser([StarlightConfig, DataArguments, PopulationArguments, RunArguments],
                             prog="recipes/train_population.py")
    (config, data_args, pop, _), _ = parser.parse(argv)
    output_dir = config.output_dir or "outputs/population"
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    check_labels(dataset, model_config.num_labels)
    with lock_output_dir(output_dir):  # one writer at a time; crash leftovers cleaned under the lock
        recover_atomic_leftovers(output_dir)
        members = train_population(model_config, dataset, output_dir, pop.num_anchors, pop.num_held_out,
                                   pop.train_args(), seed=pop.population_seed, data_settings=data_args.to_dict())
    for m in members:
        print(f"{m.role:9s} {m.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
