"""End to end, tiny: the trained star is closer to linearly connected with unseen models than an anchor is.

Three anchors and two held-out MLPs are trained on MNIST-1D, a star is learnt from the anchors
("star + CE", random init), and loss barriers (B aligned to A by weight matching, test split) are
measured: star <-> held-out must be below anchor <-> held-out, while the star stays a good model
(a star that is itself poor shows low barriers for a bad reason, see docs/concepts.md).
"""

from __future__ import annotations

import statistics

import pytest

import star_merge  # noqa: F401
from star_merge.data import load_task_dataset
from star_merge.evaluation import measure_barrier
from star_merge.population import train_population
from star_merge.rundir import load_checkpoint

from fixtures import tiny_arguments, train_star


@pytest.fixture(scope="module")
def star_and_population(tmp_path_factory):
    config, data_args, pop, _ = tiny_arguments(None, num_train_epochs=4, num_anchors=3, num_held_out=2,
                                               model_config='{"hidden_sizes": [64, 64]}', population_epochs=4)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    members = train_population(model_config, dataset, str(tmp_path_factory.mktemp("pop")), 3, 2, pop.train_args(),
                               progress=False)
    models = {m.name: load_checkpoint(m.path) for m in members}
    anchors = [(m.name, models[m.name].state_dict()) for m in members if m.role == "anchor"]
    star = train_star(config, model_config, anchors, dataset).model
    return dataset, star, models


def _barrier(a, b, dataset):
    result = measure_barrier(a, b, dataset, align="weight", num_points=6, splits=("test",), progress=False)
    curve = result.curves["test"]
    return curve.loss_barrier, curve.accuracies[0]


def test_star_to_held_out_barrier_is_below_anchor_to_held_out(star_and_population):
    dataset, star, models = star_and_population
    held_out = [n for n in models if n.startswith("held-out")]
    anchors = [n for n in models if n.startswith("anchor")]
    star_barriers, star_acc = zip(*(_barrier(star, models[h], dataset) for h in held_out))
    ordinary, anchor_acc = zip(*(_barrier(models[a], models[h], dataset) for a in anchors[:2] for h in held_out))
    star_mean, ordinary_mean = statistics.mean(star_barriers), statistics.mean(ordinary)
    assert ordinary_mean > 0.05, ordinary  # there is a barrier to reduce
    assert star_mean < 0.6 * ordinary_mean, (star_barriers, ordinary)
    assert star_acc[0] > statistics.mean(anchor_acc) - 0.08, (star_acc[0], anchor_acc)
