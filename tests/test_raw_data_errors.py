"""Bad raw-data input: one line naming the problem and the fix, exit 2, found before any model is trained or
aligned, and nothing left in --output_dir that refuses the corrected rerun."""

import importlib.util
import os

import pytest

from raw_populations import minilm_tokenizer_folder, tiny_bert_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recipe_main():
    spec = importlib.util.spec_from_file_location("star_recipe", os.path.join(ROOT, "recipes", "star.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = tmp_path_factory.mktemp("errors")
    texts = ["Return a copy of the string.", "Remove a file.", "Join two paths into one path name.",
             "Return the number of items.", "Copy data and metadata.", "Split the string at the separator."]
    features = Features({"text": Value("string"), "label": ClassLabel(names=["a", "b", "c"])})
    split = lambda labels: Dataset.from_dict({"text": texts, "label": labels}, features=features)  # noqa: E731
    DatasetDict(train=split([0, 1, 0, 1, 0, 1]), test=split([0, 1, 0, 1, 0, 1])).save_to_disk(str(base / "ok"))
    DatasetDict(train=split([0, 1, 2, 1, 0, 1]), test=split([0, 1, 0, 1, 0, 1])).save_to_disk(str(base / "3cls"))
    tok = AutoTokenizer.from_pretrained(minilm_tokenizer_folder())
    folders = {}
    for name, with_tok in (("a0", True), ("a1", True), ("h0", True), ("bare0", False), ("bare1", False)):
        folder = str(base / name)
        AutoModelForSequenceClassification.from_config(tiny_bert_config(num_labels=2)).save_pretrained(folder)
        if with_tok:
            tok.save_pretrained(folder)
        folders[name] = folder
    other = AutoTokenizer.from_pretrained(minilm_tokenizer_folder())
    other.add_tokens(["starlight"])
    folders["odd"] = str(base / "odd")
    AutoModelForSequenceClassification.from_config(tiny_bert_config(num_labels=2)).save_pretrained(folders["odd"])
    other.save_pretrained(folders["odd"])
    return base, folders


CASES = {
    "missing text column": (["a0", "a1"], "ok", ["--text_column", "body"], "no column 'body'"),
    "missing pair column": (["a0", "a1"], "ok", ["--text_column", "text", "--text_pair_column", "b"], "no column 'b'"),
    "text given as input": (["a0", "a1"], "ok", ["--input_column", "text"], "--text_column text"),
    "no processor": (["bare0", "bare1"], "ok", ["--text_column", "text"], "--processor_name_or_path"),
    "bad processor path": (["bare0", "bare1"], "ok", ["--text_column", "text", "--processor_name_or_path",
                                                      "/nonexistent/tok"], "--processor_name_or_path"),
    "labels outside the head": (["a0", "a1"], "3cls", ["--text_column", "text"], "num_labels=2"),
    "mismatched processors": (["a0", "odd"], "ok", ["--text_column", "text"], "differs from"),
    "raw data without a population": ([], "ok", ["--text_column", "text"], "--anchors"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_raw_input_is_one_line_and_leaves_no_blocking_state(setup, case, capsys):
    from star_merge.rundir import RunPaths

    base, folders = setup
    members, data, flags, expected = CASES[case]
    out = base / f"run-{case.replace(' ', '-')}"
    anchors = ["--anchors", *[folders[m] for m in members], "--held_out", folders["h0"]] if members else []
    code = _recipe_main()([*anchors, "--dataset_name", str(base / data), *flags, "--num_train_epochs", "1",
                           "--output_dir", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not RunPaths(str(out)).existing_results()  # the corrected rerun is not refused


def test_mismatched_processors_accepted_with_an_explicit_processor(setup):
    """The fix named by the error works: --processor_name_or_path chooses one for the whole population."""
    from star_merge.processing import ProcessorError, population_processor

    _, folders = setup
    with pytest.raises(ProcessorError, match="differs from"):
        population_processor([folders["a0"], folders["odd"]])
    processor, source = population_processor([folders["a0"], folders["odd"]],
                                             override=minilm_tokenizer_folder())
    assert source == minilm_tokenizer_folder() and len(processor) == 30522
    assert population_processor([folders["bare0"]]) == (None, None)


def test_barrier_cli_on_raw_text_without_processor(setup, capsys):
    from star_merge.cli import main

    base, folders = setup
    code = main(["barrier", folders["bare0"], folders["bare1"], "--dataset_name", str(base / "ok"),
                 "--text_column", "text", "--no_progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(lines) == 1 and "--processor_name_or_path" in lines[0] and "Traceback" not in err, err
