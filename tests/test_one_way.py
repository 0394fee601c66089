"""Issue 22: one way to align two models, one way to a population's data, paths relative to the run, errors.

Each test holds the shared piece against an independent reference: exact recovery of a known permutation, the
chain of steps it replaced, a hand-written path, Python's own exception.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import star_merge as sm
from star_merge.errors import USER_ERRORS, UserError, run_reporting_user_errors, user_error_line
from star_merge.models import StarMLPConfig
from star_merge.population.training import build_model, save_checkpoint


def _pair(seed_perm: int = 3, hidden=(12, 10)):
    a = build_model(StarMLPConfig(input_size=8, hidden_sizes=list(hidden), num_labels=4), 0).eval()
    spec = sm.spec_for(a)
    perm = sm.random_permutation(spec, seed_perm)
    b = build_model(StarMLPConfig(input_size=8, hidden_sizes=list(hidden), num_labels=4), 0).eval()
    b.load_state_dict(sm.apply_permutation(spec, perm, a.state_dict()))
    return a, b, spec


# ------------------------------------------------------------------------------------------------ align
@pytest.mark.parametrize("as_state_dicts", [False, True])
def test_align_weight_recovers_a_permuted_copy_exactly(as_state_dicts):
    a, b, spec = _pair()
    x, y = (a.state_dict(), b.state_dict()) if as_state_dicts else (a, b)
    aligned, record = sm.align(None if not as_state_dicts else spec, x, y, "weight", seed=0)
    assert all(torch.equal(aligned[k], a.state_dict()[k]) for k in aligned)
    assert record.method == "weight" and record.to_dict()["objective"] == pytest.approx(record.result.objective)
    # the record's permutation maps B into A's frame: applying it by hand gives the same state dict
    by_hand = sm.apply_permutation(spec, record.result.perm, b.state_dict())
    assert all(torch.equal(aligned[k], by_hand[k]) for k in aligned)


def test_align_activation_and_none():
    a, b, _ = _pair(5)
    g = torch.Generator().manual_seed(0)
    batches = [{"input_values": torch.randn(64, 8, generator=g)} for _ in range(3)]
    aligned, record = sm.align(None, a, b, "activation", data=batches)
    assert all(torch.equal(aligned[k], a.state_dict()[k]) for k in aligned) and record.method == "activation"
    same, record = sm.align(None, a, b, "none")
    assert all(torch.equal(same[k], b.state_dict()[k]) for k in same) and record.to_dict() == {"method": "none"}
    assert same["layers.0.weight"].data_ptr() != b.state_dict()["layers.0.weight"].data_ptr()  # a copy


def test_align_refuses_what_it_cannot_do():
    a, b, _ = _pair()
    with pytest.raises(UserError, match="unknown alignment method 'sinkhorn'"):
        sm.align(None, a, b, "sinkhorn")
    with pytest.raises(UserError, match="needs data"):
        sm.align(None, a, b, "activation")


def test_architecture_check_names_the_difference():
    from star_merge.modeling import ArchitectureMismatchError, check_same_architecture

    a, _, _ = _pair()
    wide = build_model(StarMLPConfig(input_size=8, hidden_sizes=[12, 11], num_labels=4), 0)
    with pytest.raises(ArchitectureMismatchError, match="layers.1.weight.*shape"):
        check_same_architecture(a, wide)
    check_same_architecture(a, _pair(7)[1])  # same architecture: no error


def test_resolve_reference_folder_file_and_unknown_id(tmp_path, monkeypatch):
    from star_merge.references import load_reference, resolve_reference

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, _, _ = _pair()
    folder = save_checkpoint(a, str(tmp_path / "a"))
    assert resolve_reference(folder) == folder
    model, where = load_reference(folder)
    assert where == folder and all(torch.equal(model.state_dict()[k], a.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(UserError, match="is a file"):
        resolve_reference(os.path.join(folder, "config.json"))
    with pytest.raises(UserError, match="neither a local folder nor a downloadable Hub model"):
        resolve_reference("no-such-owner/no-such-model")


# ------------------------------------------------------------------------------------------------ data
def test_load_population_data_is_the_chain_it_replaced(tmp_path):
    from star_merge.data import DataArguments, load_task_dataset, prepare_dataset, task_and_processor
    from star_merge.population_data import load_population_data

    a = build_model(StarMLPConfig(hidden_sizes=[12, 10]), 0)  # MNIST-1D: 40 inputs, 10 labels
    folder = save_checkpoint(a, str(tmp_path / "a"))
    args = DataArguments(num_samples=200)
    data = load_population_data(args, [folder], evaluation=True)
    task, _ = task_and_processor(args, folder)
    ref, collate = prepare_dataset(load_task_dataset(args, task=task), task, None, args)
    assert data.task is task and data.processor is None and data.collate_fn is collate
    for split in ("train", "test"):
        assert data.dataset[split]["input_values"] == ref[split]["input_values"]
        assert data.dataset[split]["labels"] == ref[split]["labels"]


def test_load_population_data_checks_labels_and_the_input_column(tmp_path):
    from star_merge.data import DataArguments
    from star_merge.population_data import load_population_data
    from star_merge.tasks import DatasetError

    few = build_model(StarMLPConfig(hidden_sizes=[12], num_labels=3), 0)  # MNIST-1D has 10 labels
    with pytest.raises(DatasetError, match="num_labels=3"):
        load_population_data(DataArguments(num_samples=200), [save_checkpoint(few, str(tmp_path / "few"))])


# ------------------------------------------------------------------------------------------------ facts once
def test_architecture_suffixes_give_task_pipeline_tag_and_bma_head_from_one_table():
    from star_merge.bma.modeling_star_bma import head_of  # self-contained file: its own copy, held to the table
    from star_merge.tasks import pipeline_tag_for, task_for

    expected = {  # suffix: (task, Hub pipeline tag), written out by hand
        "ForSequenceClassification": ("sequence-classification", "text-classification"),
        "ForImageClassification": ("image-classification", "image-classification"),
        "ForCausalLM": ("causal-lm", "text-generation"),
        "LMHeadModel": ("causal-lm", "text-generation"),
        "ForMaskedLM": ("masked-lm", "fill-mask"),
        "ForPreTraining": ("masked-lm", "fill-mask"),
    }
    for suffix, (task, tag) in expected.items():
        arch = "Some" + suffix
        assert task_for(name=None, config_or_model=type("C", (), {"architectures": [arch]})()).name == task
        assert pipeline_tag_for(arch) == tag and head_of(arch) == task_for(name=task).bma_head
    assert pipeline_tag_for("WhisperForAudioClassification") == "audio-classification"
    assert pipeline_tag_for("BertForTokenClassification") == "token-classification"
    assert pipeline_tag_for("BertModel") is None


# ------------------------------------------------------------------------------------------------ paths
def test_paths_relative_to_the_run_compare_whole_components(tmp_path):
    from star_merge.hub.sanitize import sanitize_json_text
    from star_merge.rundir import RunPaths, path_in_run

    run = str(tmp_path / "run")
    sibling = str(tmp_path / "run2" / "population" / "anchor-00")  # starts with the run's path as a string
    inside = os.path.join(run, "population", "anchor-00")
    assert path_in_run(inside, run) == os.path.join("population", "anchor-00")
    assert path_in_run(run, run) == "."
    assert path_in_run(sibling, run) is None
    assert RunPaths(run).relative(sibling) == sibling and RunPaths(run).relative(inside) == "population/anchor-00"
    clean = json.loads(sanitize_json_text(json.dumps({"a": inside, "b": sibling}), run))
    assert clean == {"a": "population/anchor-00", "b": "anchor-00"}  # the sibling's name only, never "../run2/…"


# ------------------------------------------------------------------------------------------------ errors
def test_an_internal_key_error_keeps_its_traceback():
    def bug():
        return {}["missing"]

    with pytest.raises(KeyError, match="missing"):
        run_reporting_user_errors(bug)
    with pytest.raises(ValueError, match="plain"):
        run_reporting_user_errors(lambda: (_ for _ in ()).throw(ValueError("plain")))
    assert user_error_line(KeyError("x")) is None and user_error_line(ValueError("x")) is None
    assert ValueError not in USER_ERRORS and KeyError not in USER_ERRORS


def test_user_errors_print_one_line(capsys):
    def bad():
        raise UserError("what to fix\nsecond line")

    assert run_reporting_user_errors(bad, prog="star-merge x") == 2
    assert capsys.readouterr().err == "star-merge x: error: what to fix\n"
    assert run_reporting_user_errors(lambda: open("/nonexistent/star-merge/file")) == 2  # a named OS error
    from star_merge.hub import PushError

    assert issubclass(PushError, UserError)  # no special case needed


def test_a_bug_inside_a_command_is_not_turned_into_one_line(tmp_path, monkeypatch):
    import star_merge.commands.evaluate as evaluate_cmd
    from star_merge.cli import main

    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(evaluate_cmd, "evaluate_run", broken)
    monkeypatch.setattr(evaluate_cmd, "lock_run_dir", lambda path: open(os.devnull))
    with pytest.raises(KeyError, match="internal"):
        main(["evaluate", str(tmp_path)])
