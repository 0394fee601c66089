"""The `star-merge` console entry point: subcommands wired, one-line errors with exit status 2."""

import subprocess
import sys

import torch

import star_merge as sm
from star_merge.cli import main
from star_merge.models import StarMLPConfig
from star_merge.rundir import load_checkpoint
from star_merge.population.training import build_model, save_checkpoint


def test_adapters_lists_every_family(capsys):
    assert main(["adapters"]) == 0
    listed = capsys.readouterr().out.split()
    for t in ("bert", "gpt2", "llama", "mistral", "qwen2", "resnet", "roberta", "star-cnn1d", "star-mlp", "vit"):
        assert t in listed


def test_align_writes_b_aligned_to_a(tmp_path, capsys):
    config = StarMLPConfig(hidden_sizes=[12, 10])
    a = build_model(config, 0)
    spec = sm.spec_for(a)
    perm = sm.random_permutation(spec, 3)
    b = build_model(config, 0)
    b.load_state_dict(sm.apply_permutation(spec, perm, a.state_dict()))
    pa, pb = save_checkpoint(a, str(tmp_path / "a")), save_checkpoint(b, str(tmp_path / "b"))
    assert main(["align", pa, pb, "--output_dir", str(tmp_path / "c")]) == 0
    aligned = load_checkpoint(str(tmp_path / "c")).state_dict()
    assert all(torch.equal(aligned[k], a.state_dict()[k]) for k in aligned)
    # a second run into the same folder is refused with one line on stderr
    capsys.readouterr()
    assert main(["align", pa, pb, "--output_dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("star-merge align: error:") and "overwrite" in err[0]


def test_console_script_reports_bad_run_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "star_merge.cli", "evaluate", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a star-merge run directory" in proc.stderr


COMMANDS = ("adapters", "align", "barrier", "evaluate", "export-bma", "push")


def test_every_subcommand_has_help(capsys):
    import pytest

    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0, command
        out = capsys.readouterr().out
        assert out.startswith(f"usage: star-merge {command}"), command
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(c in out for c in COMMANDS)


def test_both_recipes_have_help():
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for recipe, flag in (("star.py", "--num_anchors"), ("train_population.py", "--population_epochs")):
        proc = subprocess.run([sys.executable, os.path.join(root, "recipes", recipe), "--help"], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert flag in proc.stdout and "--config" not in proc.stderr


def test_subcommand_arguments_are_typed_and_read_from_yaml(tmp_path, capsys):
    """The subcommand parser is the recipes' parser: a YAML file gives defaults, typed like the flags."""
    from star_merge.commands.evaluate import EvaluateArguments

    parser = __import__("star_merge.cli", fromlist=["build_parser"]).build_parser()
    evaluate = parser.commands["evaluate"]
    (tmp_path / "eval.yaml").write_text("num_points: 5\npairs: '3'\n")
    (args,), name = evaluate.parse(["RUN", "--config", str(tmp_path / "eval.yaml"), "--seed", "7"])
    assert isinstance(args, EvaluateArguments) and name == "eval"
    assert (args.run_dir, args.num_points, args.pairs, args.seed) == ("RUN", 5, 3, 7)
    assert main(["evaluate", "RUN", "--pairs", "zero"]) == 2
    assert "--pairs must be 'all' or a positive integer" in capsys.readouterr().err


def test_barrier_on_text_models_without_data_flags_asks_for_them(tmp_path, capsys):
    """BERT classifiers and no data flags: the built-in MNIST-1D (--dataset_name's default) fits no text model, so
    the command asks for the members' data (was: evaluated on MNIST-1D and blamed the model's num_labels)."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from raw_populations import minilm_tokenizer_folder, tiny_bert_config

    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_folder())
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = str(tmp_path / f"bert{seed}")
        BertForSequenceClassification(tiny_bert_config(num_labels=4)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    assert main(["barrier", *folders, "--no_progress"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and "num_labels" not in lines[0], lines
    err = lines[0]
    assert "no built-in dataset fits these bert models" in err and "--dataset_name" in err and "'mnist1d'" in err
