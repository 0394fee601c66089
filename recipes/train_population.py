"""Train a population: N anchors and M held-out models of one architecture, one seed each, as HF checkpoints.

    # the demo's population (10 anchors + 5 held-out star-cnn1d models on MNIST-1D)
    python recipes/train_population.py --output_dir outputs/population

    # a BatchNorm CNN population from a config; re-running skips members already trained
    python recipes/train_population.py --config recipes/configs/mnist1d_cnn1d.yaml --output_dir outputs/cnn-pop

    # the members split over two processes (member k trained by process k % 2): the same population
    accelerate launch --multi_gpu --num_processes 2 recipes/train_population.py --output_dir outputs/population

    # raw text or images: processed with the population's tokenizer / image processor (saved with each member),
    # the head sized from the dataset's ClassLabel
    python recipes/train_population.py --dataset_name my-texts --text_column text --processor_name_or_path \
        sentence-transformers/all-MiniLM-L6-v2 --model_type bert --model_config '{"hidden_size": 64, ...}'

Anchor i is trained with seed population_seed + i, held-out model j with population_seed + 1000 + j; a member
depends only on its seed, so the population is the same on any number of processes.
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
    import contextlib

    from accelerate import PartialState

    from star_merge.argparsing import ArgumentsParser
    from star_merge.data import DataArguments
    from star_merge.errors import UserError
    from star_merge.locking import lock_output_dir, recover_atomic_leftovers
    from star_merge.pipeline import RunArguments
    from star_merge.population import PopulationArguments, member_is_complete, train_population
    from star_merge.population.data import load_training_data
    from star_merge.starlight import StarlightConfig

    # The recipe configs also carry Starlight/run settings: parse them all (so the same YAML files work
    # here), use the data and population parts; --output_dir is the population folder.
    parser = ArgumentsParser([StarlightConfig, DataArguments, PopulationArguments, RunArguments],
                             prog="recipes/train_population.py")
    (config, data_args, pop, _), _ = parser.parse(argv)
    output_dir = config.output_dir or "outputs/population"
    import torch

    # one process, or one per `accelerate launch --multi_gpu --num_processes N` worker (CPU workers: one gloo group)
    state = PartialState(cpu=not torch.cuda.is_available())
    data = load_training_data(data_args, pop, seed=pop.population_seed, context=state.main_process_first)
    with lock_output_dir(output_dir) if state.is_main_process else contextlib.nullcontext():
        if state.is_main_process:  # one writer at a time; crash leftovers cleaned under the lock
            recover_atomic_leftovers(output_dir)
        state.wait_for_everyone()
        members = train_population(data.model_config, data.dataset, output_dir, pop.num_anchors, pop.num_held_out,
                                   pop.train_args(), seed=pop.population_seed, data_settings=data_args.to_dict(),
                                   retrain_stale=config.overwrite_output_dir, device=state.device,
                                   task=data.task, collate_fn=data.collate_fn, processor=data.processor,
                                   process_index=state.process_index, num_processes=state.num_processes)
        state.wait_for_everyone()  # every member is on disk before anyone reports the population
    missing = [m.path for m in members if not member_is_complete(m.path)]
    if missing:
        raise UserError(f"{missing[0]} was not written by its process; rerun to train the missing members")
    if state.is_main_process:
        for m in members:
            print(f"{m.role:9s} {m.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
