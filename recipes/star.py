"""Learn a star model with Starlight, from a population on the Hub, in local folders, or trained here.

    # the built-in demo: MNIST-1D, the BatchNorm CNN star-cnn1d, 10 anchors + 5 held-out models (2 min 28 s wall on the quiet 2-core machine, docs/results.md)
    accelerate launch recipes/star.py

    # a named configuration; flags override its values
    accelerate launch recipes/star.py --config recipes/configs/mnist1d_cnn1d.yaml --num_train_epochs 5

    # your own population (Hub ids with optional @revision, local folders, or a population file); without
    # --config its defaults are recipes/configs/own_population.yaml (the method only, never the demo's
    # data, model type, epochs or learning rate): set --num_train_epochs / --learning_rate for your models
    accelerate launch recipes/star.py --anchors org/seed-0 org/seed-1@main ./seed-2 \
        --held_out org/seed-9 --dataset_name mnist1d --output_dir outputs/mine

    # raw data read with the population's own tokenizer / image processor (docs/quickstart.md)
    accelerate launch recipes/star.py --anchors ./m0 ./m1 --held_out ./m2 --dataset_name ./ds --text_column text
    accelerate launch recipes/star.py --anchors ./v0 ./v1 --held_out ./v2 --dataset_name ./imgs \
        --input_column image --augment

    # data parallel: two processes (GPUs, or CPU processes on a machine without GPUs)
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/star.py

    # resume after a crash
    accelerate launch recipes/star.py --resume_from_checkpoint latest --output_dir outputs/mnist1d_cnn1d_demo

Writes the run directory described in docs/run_directory.md.
"""

import os
import sys

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "mnist1d_cnn1d_demo.yaml")
# --anchors without --config: the demo's Starlight method only, never its population, data or schedule
OWN_POPULATION_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "own_population.yaml")


def default_config(argv) -> str:
    """The config a run without --config starts from (the demo, or for --anchors the method only), said aloud
    for a user's own population when it leaves the schedule to the defaults."""
    if not any(a == "--anchors" or a.startswith("--anchors=") for a in argv):
        return DEFAULT_CONFIG
    unset = [f for f in ("--num_train_epochs", "--learning_rate") if not any(a.split("=")[0] == f for a in argv)]
    if unset and os.environ.get("RANK", "0") == "0":
        print(f"recipes/star.py: your own population (--anchors): the demo's settings are not applied; "
              f"{' and '.join(unset)} take the defaults (20 epochs, lr 1e-3), the method recipes/configs/"
              "own_population.yaml's; set them for your models or pass --config", file=sys.stderr)
    return OWN_POPULATION_CONFIG


def main(argv=None) -> int:
    from star_merge.errors import run_reporting_user_errors
    from star_merge.launch import die_with_parent, under_launcher

    if under_launcher():
        die_with_parent()  # killing `accelerate launch` ends this process too
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_reporting_user_errors(lambda: _run(argv))


def parse_arguments(argv):
    """``(StarlightConfig, DataArguments, PopulationArguments, RunArguments)`` of a command line; without
    ``--config`` the demo's values (or for ``--anchors`` the method's) are the defaults."""
    from star_merge.argparsing import ArgumentsParser
    from star_merge.data import DataArguments
    from star_merge.starlight import StarlightConfig
    from star_merge.population import PopulationArguments
    from star_merge.pipeline import RunArguments

    if "--config" not in argv:
        argv = ["--config", default_config(argv), *argv]
    parser = ArgumentsParser([StarlightConfig, DataArguments, PopulationArguments, RunArguments], prog="recipes/star.py")
    (config, data_args, pop, run_args), name = parser.parse(argv)
    if config.output_dir is None:
        config.output_dir = os.path.join("outputs", name or "mnist1d_cnn1d_demo")
    return config, data_args, pop, run_args


def _run(argv) -> int:
    from accelerate import PartialState

    from star_merge.evaluation.render import render_markdown
    from star_merge.pipeline import run_starlight_pipeline

    config, data_args, pop, run_args = parse_arguments(argv)
    report = run_starlight_pipeline(config, data_args, pop, run_args)
    if not PartialState().is_main_process:
        return 0
    if report:
        print(render_markdown(report).split("\n## ", 2)[0 if "summary" not in report else 1][:4000])
    print(f"run directory: {os.path.abspath(config.output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
