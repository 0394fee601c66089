"""Built-in datasets made offline, user-dataset column mapping, label checks."""

import numpy as np
import pytest
import random

from star_merge.tasks import check_labels
from star_merge.data import DataArguments, DatasetError, load_digits_dataset, load_mnist1d, load_task_dataset


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
    # a save_to_disk folder is read with datasets.load_from_disk
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


def _hf_reference_batches(ds, batch_size, shuffle=False, seed=0, drop_last=False):
    """What the loader yielded before TensorColumns: the HF torch-formatted dataset, rows collated by torch."""
    import torch

    g = torch.Generator().manual_seed(seed) if shuffle else None
    return list(torch.utils.data.DataLoader(ds.with_format("torch"), batch_size=batch_size, shuffle=shuffle,
                                            generator=g, drop_last=drop_last))


@pytest.mark.parametrize("shuffle,drop_last", [(False, False), (True, False), (True, True)])
def test_make_dataloader_column_tensors_give_the_hf_batches(mnist1d, shuffle, drop_last):
    import torch

    from star_merge.columns import TensorColumns
    from star_merge.data import make_dataloader

    ds = mnist1d["test"].select(range(300))
    loader = make_dataloader(ds, 64, shuffle=shuffle, seed=5, drop_last=drop_last)
    assert isinstance(loader.dataset, TensorColumns)
    got, want = list(loader), _hf_reference_batches(ds, 64, shuffle, 5, drop_last)
    assert len(got) == len(want) == (300 // 64 if drop_last else -(-300 // 64))
    for a, b in zip(got, want):
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])


def test_make_dataloader_keeps_row_formatting_for_ragged_or_text_columns():
    from datasets import Dataset

    from star_merge.columns import TensorColumns
    from star_merge.data import make_dataloader

    ragged = Dataset.from_dict({"input_ids": [[1, 2], [3], [4, 5, 6]], "labels": [0, 1, 0]})
    text = Dataset.from_dict({"input_values": [[0.0, 1.0]] * 3, "text": ["a", "b", "c"], "labels": [0, 1, 0]})
    for ds in (ragged, text):
        assert not isinstance(make_dataloader(ds, 2).dataset, TensorColumns)
    numeric = Dataset.from_dict({"input_values": [[0.0, 1.0]] * 3, "labels": [0, 1, 0]})
    assert not isinstance(make_dataloader(numeric, 2, collate_fn=lambda rows: rows).dataset, TensorColumns)


def test_save_to_disk_folder_after_map_is_read_with_load_from_disk(tmp_path):
    """A ``.map()`` on the ``load_from_disk`` copy leaves ``cache-*.arrow`` files in the saved folder; they are not
    rows of the dataset (``load_dataset`` read them too: the split doubled, or a CastError for other columns)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = str(tmp_path / "saved")
    DatasetDict(train=Dataset.from_dict({"signal": [[float(i)] * 4 for i in range(9)], "label": [i % 3 for i in range(9)]}),
                test=Dataset.from_dict({"signal": [[0.0] * 4] * 3, "label": [0, 1, 2]})).save_to_disk(path)
    copy = load_from_disk(path)
    copy["train"].map(lambda row: {"signal": [v + 1 for v in row["signal"]]})  # same columns: rows would double
    copy["train"].map(lambda row: {"input_ids": [1, 2]}, remove_columns=["signal"])  # other columns: CastError
    assert list((tmp_path / "saved" / "train").glob("cache-*.arrow"))
    ds = load_task_dataset(DataArguments(dataset_name=path, input_column="signal"), "input_values")
    assert len(ds["train"]) == 9 and len(ds["test"]) == 3
    assert ds["train"]["labels"] == [i % 3 for i in range(9)]
