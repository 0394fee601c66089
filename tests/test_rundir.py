"""Atomic folder writes: an output folder is replaced whole or not at all."""

import os

import pytest

from star_merge.io import atomic_folder


def test_atomic_folder_replaces_and_leaves_no_temp(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(str(out)) as tmp:
        (open(os.path.join(tmp, "a.txt"), "w")).write("one")
    assert (out / "a.txt").read_text() == "one"
    with atomic_folder(str(out)) as tmp:
        (open(os.path.join(tmp, "b.txt"), "w")).write("two")
    assert sorted(os.listdir(out)) == ["b.txt"]  # the old folder is gone, not merged
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp or set-aside folder left


def test_atomic_folder_failure_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(str(out)) as tmp:
            (open(os.path.join(tmp, "half.txt"), "w")).write("partial")
            raise RuntimeError("crash while writing")
    assert sorted(os.listdir(out)) == ["keep.txt"] and (out / "keep.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out"]
