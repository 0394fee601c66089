"""Built-in datasets made offline, user-dataset column mapping, label checks."""

import numpy as np
import pytest
import random

from star_merge.data import DataArguments, DatasetError, check_labels, load_digits_dataset, load_mnist1d, load_task_dataset


def test_mnist1d_defaults(mnist1d):
    assert len(mnist1d["train"]) == 4000 and len(mnist1d["test"]) == 1000
    x = mnist1d["train"].with_format("numpy")[:]["input_values"]
    assert x.shape == (4000, 40) and x.dtype == np.float32
    assert sorted(set(mnist1d["train"]["labels"])) == list(range(10))


def test_mnist1d_seeded_and_leaves_global_rng_alone():
    random.seed(1)
    np.random.seed(1)
    before = (random.random(), np.random.rand())
    random.seed(1)
    np.random.seed(1)
    a = load_mnist1d(200, seed=3)
    after = (random.random(), np.random.rand())
    assert before == after
    b, c = load_mnist1d(200, seed=3), load_mnist1d(200, seed=4)
    assert a["train"]["input_values"] == b["train"]["input_values"]
    assert a["train"]["input_values"] != c["train"]["input_values"]


def test_digits_images():
    ds = load_digits_dataset()
    assert np.asarray(ds["train"][0]["pixel_values"]).shape == (1, 8, 8)
    assert len(ds["train"]) + len(ds["test"]) == 1797


def test_local_dataset_column_mapping_and_errors(tmp_path):
    from datasets import Dataset, DatasetDict

    raw = DatasetDict(
        train=Dataset.from_dict({"signal": [[0.0] * 40] * 6, "y": [0, 1, 2, 0, 1, 2]}),
        test=Dataset.from_dict({"signal": [[1.0] * 40] * 3, "y": [0, 1, 2]}),
    )
    path = str(tmp_path / "ds")
    raw.save_to_disk(path)
    # datasets.load_dataset reads a saved DatasetDict folder via the "arrow" builder
    ds = load_task_dataset(DataArguments(dataset_name=path, input_column="signal", label_column="y"), "input_values")
    assert ds["train"].column_names == ["input_values", "labels"]
    with pytest.raises(DatasetError, match="no label column 'label'"):
        load_task_dataset(DataArguments(dataset_name=path, input_column="signal"), "input_values")
    with pytest.raises(DatasetError, match="labels span \\[0, 2\\].*num_labels=2"):
        check_labels(ds, 2)
    with pytest.raises(DatasetError, match="no split 'validation'"):
        load_task_dataset(DataArguments(dataset_name=path, input_column="signal", label_column="y",
                                        test_split="validation"), "input_values")
    with pytest.raises(DatasetError, match="is empty"):
        load_task_dataset(DataArguments(dataset_name=path, input_column="signal", label_column="y",
                                        max_eval_samples=0), "input_values")
