"""Star-domain BMA wrapper: exact agreement with members built by hand, storage, BatchNorm, three load paths.

Fixture run directories are built here (cheaper than tests/fixtures.py's full pipeline): three tiny star-mlp /
star-cnn1d anchors trained for 2 epochs on a small MNIST-1D, the "star" one more trained model, and anchors after
the first carrying random permutations, so the BMA must use the aligned anchors to reproduce the members
computed by hand.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from star_merge import random_permutation
from star_merge.bma import (
    StarBMAConfig,
    StarBMAForImageClassification,
    bma_predict_proba,
    build_bma,
    draw_samples,
    export_bma,
    load_bma,
    save_bma,
)
from star_merge.evaluation import interpolate_state_dicts, reset_bn_stats
from star_merge.data import DataArguments, make_dataloader
from star_merge.models import (
    StarCNN1dConfig,
    StarCNN1dForClassification,
    StarMLPConfig,
    StarMLPForClassification,
)
from star_merge.io import atomic_write_json
from star_merge.rundir import MANIFEST_NAME, RunDirectory, save_permutations
from star_merge.population.training import TrainArguments, build_model, save_checkpoint, train_classifier

NUM_ANCHORS = 3
DATA = DataArguments(dataset_name="mnist1d", num_samples=400)


def _make_run_dir(path, config, seed0: int):
    """A run directory per docs/run_directory.md: 3 anchors, 1 held-out model, a star, anchor permutations."""
    from star_merge.data import load_task_dataset

    ds = load_task_dataset(DATA)
    train_args = TrainArguments(num_train_epochs=2, per_device_train_batch_size=64)
    members = []
    for i, (name, role) in enumerate(
        [*((f"anchor-{k:02d}", "anchor") for k in range(NUM_ANCHORS)), ("held-out-00", "held-out")]
    ):
        model, _ = train_classifier(
            build_model(config, seed0 + i), ds, train_args, seed=seed0 + i, progress=False
        )
        save_checkpoint(model, os.path.join(path, "population", name))
        members.append({"name": name, "role": role, "path": f"population/{name}", "source": "trained"})
    star, _ = train_classifier(
        build_model(config, seed0 + 100), ds, train_args, seed=seed0 + 100, progress=False
    )
    save_checkpoint(star, os.path.join(path, "star"))
    atomic_write_json(
        os.path.join(path, MANIFEST_NAME),
        {
            "config": {},
            "data": DATA.to_dict(),
            "model_type": config.model_type,
            "model_input_name": "input_values",
            "members": members,
        },
    )
    spec = RunDirectory(path).spec
    perms = {m["name"]: random_permutation(spec, seed=k) for k, m in enumerate(members[:NUM_ANCHORS])}
    perms["anchor-00"] = {p: torch.arange(len(v)) for p, v in perms["anchor-00"].items()}  # identity
    save_permutations(os.path.join(path, "anchor_permutations.safetensors"), perms)
    return path


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    return _make_run_dir(
        str(tmp_path_factory.mktemp("mlp-run")), StarMLPConfig(hidden_sizes=[32, 32]), seed0=0
    )


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    return _make_run_dir(str(tmp_path_factory.mktemp("cnn-run")), StarCNN1dConfig(channels=[4, 8]), seed0=10)


@pytest.fixture(scope="module")
def test_inputs(mlp_run):
    return torch.tensor(RunDirectory(mlp_run).load_dataset()["test"][:64]["input_values"])


def _log_mean_softmax(member_logits: torch.Tensor) -> torch.Tensor:
    return torch.log(member_logits.float().softmax(-1).mean(0))


def _hand_members(run_dir: str, samples, model_cls, config, x, bn_loader=None):
    """Logits of each sampled star-domain point, built from the run directory without the BMA code."""
    run_ = RunDirectory(run_dir)
    star = run_.load_star().state_dict()
    aligned = run_.aligned_anchor_state_dicts()
    names = [m.name for m in run_.anchors]
    logits, states = [], []
    for n, t in samples:
        member = model_cls(config)
        member.load_state_dict(interpolate_state_dicts(star, aligned[names[n]], t))
        if bn_loader is not None:
            reset_bn_stats(member, bn_loader)
        states.append(member.state_dict())
        with torch.no_grad():
            logits.append(member.eval()(input_values=x).logits)
    return torch.stack(logits), states


def test_logits_are_log_mean_softmax_of_the_sampled_members(mlp_run, test_inputs, tmp_path):
    out = export_bma(mlp_run, str(tmp_path / "bma"), num_samples=6, seed=3)
    bma = load_bma(out)
    assert bma.config.samples == draw_samples(NUM_ANCHORS, 6, "uniform", [0.0, 1.0], 3)
    assert len({n for n, _ in bma.config.samples}) > 1, "the draw should visit several anchors"
    run_ = RunDirectory(mlp_run)
    member_config = run_.load_star().config
    expected, _ = _hand_members(
        mlp_run, bma.config.samples, StarMLPForClassification, member_config, test_inputs
    )
    with torch.no_grad():
        got = bma(input_values=test_inputs, return_member_logits=True)
    torch.testing.assert_close(got.member_logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits, _log_mean_softmax(expected), rtol=1e-5, atol=1e-5)
    # the stored anchors are the permuted (aligned) ones, not the raw checkpoints
    raw = run_.load_member("anchor-01").state_dict()
    stored = bma.anchors[1].tensors()
    aligned = run_.aligned_anchor_state_dicts()["anchor-01"]
    assert torch.equal(stored["layers.0.weight"], aligned["layers.0.weight"])
    assert not torch.equal(stored["layers.0.weight"], raw["layers.0.weight"])
    # labels give the BMA's NLL; probabilities sum to one
    labels = torch.tensor(run_.load_dataset()["test"][:64]["labels"])
    with torch.no_grad():
        loss = bma(input_values=test_inputs, labels=labels).loss
    assert math.isclose(float(loss), float(torch.nn.functional.nll_loss(got.logits, labels)), rel_tol=1e-6)
    probs = bma_predict_proba(bma, make_dataloader(run_.load_dataset()["test"].select(range(64)), 16))
    torch.testing.assert_close(probs, got.logits.softmax(-1))


def test_explicit_samples_at_t1_are_the_deep_ensemble_of_the_raw_anchors(mlp_run, test_inputs):
    """samples=[[n, 1.0] for every anchor]: the BMA is the mean softmax of the anchors as trained (permutation
    invariance), computed here from the unpermuted checkpoints, which the BMA code never sees."""
    run_ = RunDirectory(mlp_run)
    samples = [[n, 1.0] for n in range(NUM_ANCHORS)]
    bma = build_bma(run_.load_star(), run_.aligned_anchor_state_dicts(), num_samples=NUM_ANCHORS, samples=samples)
    assert bma.config.samples == samples
    with torch.no_grad():
        raw = torch.stack([run_.load_member(m.name).eval()(input_values=test_inputs).logits for m in run_.anchors])
        got = bma(input_values=test_inputs).logits
    torch.testing.assert_close(got, _log_mean_softmax(raw), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="samples lists 2 points"):
        build_bma(run_.load_star(), run_.aligned_anchor_state_dicts(), num_samples=3, samples=samples[:2])


def test_same_seed_same_bma_other_seed_other_samples(mlp_run, test_inputs, tmp_path):
    a = load_bma(export_bma(mlp_run, str(tmp_path / "a"), num_samples=5, seed=7))
    b = load_bma(export_bma(mlp_run, str(tmp_path / "b"), num_samples=5, seed=7))
    c = load_bma(export_bma(mlp_run, str(tmp_path / "c"), num_samples=5, seed=8))
    assert a.config.samples == b.config.samples != c.config.samples
    with torch.no_grad():
        la, lb, lc = (m(input_values=test_inputs).logits for m in (a, b, c))
    assert torch.equal(la, lb)
    assert not torch.allclose(la, lc)
    assert (
        load_file(str(tmp_path / "a" / "model.safetensors")).keys()
        == load_file(str(tmp_path / "c" / "model.safetensors")).keys()
    )


def test_t_distributions():
    cfg = StarMLPConfig(hidden_sizes=[4]).to_dict()
    const = StarBMAConfig(member_config=cfg, num_anchors=2, num_samples=8, t_distribution="constant(0.25)")
    assert {t for _, t in const.samples} == {0.25}
    beta = StarBMAConfig(member_config=cfg, num_anchors=2, num_samples=64, t_distribution="beta(2,2)", seed=1)
    ts = torch.tensor([t for _, t in beta.samples])
    assert 0 < ts.min() and ts.max() < 1 and len(set(ts.tolist())) == 64
    narrow = StarBMAConfig(
        member_config=cfg, num_anchors=2, num_samples=32, t_distribution="uniform(0.2,0.4)"
    )
    assert all(0.2 <= t <= 0.4 for _, t in narrow.samples)


def _tensor_bytes(state_dict) -> int:
    return sum(t.numel() * t.element_size() for t in state_dict.values())


def test_each_tensor_is_stored_once(cnn_run, tmp_path):
    out = export_bma(cnn_run, str(tmp_path / "bma"), num_samples=4, seed=0)
    star_sd = RunDirectory(cnn_run).load_star().state_dict()
    bn_names = [
        k for k in star_sd if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
    ]
    assert bn_names
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    expected = {f"star.{k}" for k in star_sd}
    expected |= {f"anchors.{i}.{k}" for i in range(NUM_ANCHORS) for k in star_sd}
    expected |= {f"bn_stats.{s}.{k}" for s in range(4) for k in bn_names}
    assert keys == expected
    payload = (1 + NUM_ANCHORS) * _tensor_bytes(star_sd) + 4 * _tensor_bytes(
        {k: star_sd[k] for k in bn_names}
    )
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    assert payload <= size <= payload + 32_000  # + the JSON header
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in os.listdir(out))


def test_batchnorm_statistics_are_recomputed_per_sample(cnn_run, tmp_path):
    out = export_bma(cnn_run, str(tmp_path / "bma"), num_samples=3, seed=1, batch_size=128)
    bma = load_bma(out)
    run_ = RunDirectory(cnn_run)
    bn_loader = make_dataloader(run_.load_dataset()["train"], 128)
    x = torch.tensor(run_.load_dataset()["test"][:32]["input_values"])
    config = run_.load_star().config
    expected, states = _hand_members(
        cnn_run, bma.config.samples, StarCNN1dForClassification, config, x, bn_loader
    )
    for s, state in enumerate(states):
        for name, stored in bma.bn_stats[s].tensors().items():
            torch.testing.assert_close(stored, state[name], rtol=1e-5, atol=1e-6)
    means = [bma.bn_stats[s].tensors()["norms.0.running_mean"] for s in range(3)]
    assert not torch.allclose(means[0], means[1])  # statistics belong to each point, not shared
    assert not torch.allclose(means[0], bma.star.tensors()["norms.0.running_mean"])
    with torch.no_grad():
        got = bma(input_values=x, return_member_logits=True)
    torch.testing.assert_close(got.member_logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.logits, _log_mean_softmax(expected), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- three load paths
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *["the", "a", "star", "model", "is", "good", "bad", "very", "not", "movie", "great", "awful"],
]
TEXTS = ["the movie is great", "very bad model", "a star is not awful"]


def _bert_bma(path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    (path / "vocab").mkdir()
    (path / "vocab" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab" / "vocab.txt"))
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    star = BertForSequenceClassification(config)
    anchors = {f"anchor-{i:02d}": BertForSequenceClassification(config).state_dict() for i in range(2)}
    return save_bma(
        build_bma(star, anchors, num_samples=3, seed=0), str(path / "bma-bert"), processor=tokenizer
    )


def _resnet_bma(path):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    config = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=3,
    )
    torch.manual_seed(0)
    star = ResNetForImageClassification(config)
    anchors = {f"anchor-{i:02d}": ResNetForImageClassification(config).state_dict() for i in range(2)}
    loader = [
        {"pixel_values": torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i))}
        for i in range(2)
    ]
    model = build_bma(star, anchors, num_samples=3, seed=0, bn_dataloader=loader)
    assert isinstance(model, StarBMAForImageClassification)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    return save_bma(model, str(path / "bma-resnet"), processor=processor)


# Runs in a fresh interpreter: loads every BMA folder and saves its predictions (logits) to OUT.
_HIDE_STAR_MERGE = """
import sys
class _HideStarMerge:
    def find_spec(self, name, path=None, target=None):
        if name == "star_merge" or name.startswith("star_merge."):
            raise ImportError("star_merge is hidden in this test")
sys.meta_path.insert(0, _HideStarMerge())
"""
_INPUTS = """
import numpy as np, torch
from PIL import Image
from safetensors.torch import load_file, save_file
inputs = load_file(INPUTS)
texts = TEXTS
images = [Image.fromarray(a) for a in inputs["images"].numpy()]
"""
_AUTO = """
from transformers import AutoModelForImageClassification as Img, AutoModelForSequenceClassification as Seq, AutoProcessor
out = {}
with torch.no_grad():
    for key in ("mlp", "cnn"):
        m = Seq.from_pretrained(DIRS[key], **KW)
        out[key] = m(input_values=inputs["x"]).logits
    m = Seq.from_pretrained(DIRS["bert"], **KW)
    tok = AutoProcessor.from_pretrained(DIRS["bert"], **KW)
    out["bert"] = m(**tok(texts, return_tensors="pt", padding=True)).logits
    m = Img.from_pretrained(DIRS["resnet"], **KW)
    proc = AutoProcessor.from_pretrained(DIRS["resnet"], **KW)
    out["resnet"] = m(**proc(images, return_tensors="pt")).logits
modules = {type(m).__module__.split(".")[0]}
"""
_PIPELINE = """
from transformers import pipeline
out = {}
for key, task, data in (("bert", "text-classification", texts), ("resnet", "image-classification", images)):
    pipe = pipeline(task, model=DIRS[key], trust_remote_code=True, top_k=None)
    rows = pipe(data)
    order = {label: i for i, label in pipe.model.config.id2label.items()}
    probs = torch.zeros(len(rows), len(order))
    for r, row in enumerate(rows):
        for item in row:
            probs[r, order[item["label"]]] = item["score"]
    out[key] = probs.log()
modules = {type(pipe.model).__module__.split(".")[0]}
"""
_FINISH = """
assert ("star_merge" in sys.modules) == EXPECT_STAR_MERGE, sorted(k for k in sys.modules if k.startswith("star_merge"))
assert modules == {EXPECT_MODULE}, modules
save_file({k: v.contiguous() for k, v in out.items()}, OUT)
"""


def _run_fresh(script: str, tmp_path, **constants) -> dict:
    header = "import sys\n" + "".join(f"{k} = {v!r}\n" for k, v in constants.items())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf-modules"))
    proc = subprocess.run(
        [sys.executable, "-c", header + script],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(constants["OUT"])


def test_a_bma_ships_only_the_member_code_it_needs(mlp_run, tmp_path):
    """A BERT BMA holds the wrapper's code only (was: also star-merge's cnn1d.py / mlp.py / common.py); a star-mlp
    BMA also the built-in model files and their entry module, named in auto_map (the three load paths below load
    both with trust_remote_code)."""
    wrapper = {"configuration_star_bma.py", "modeling_star_bma.py"}
    builtin = {"builtin_members.py", "common.py", "mlp.py", "cnn1d.py"}
    bert = _bert_bma(tmp_path)
    assert {f for f in os.listdir(bert) if f.endswith(".py")} == wrapper
    assert json.load(open(os.path.join(bert, "config.json")))["auto_map"]["AutoModelForSequenceClassification"] \
        == "modeling_star_bma.StarBMAForSequenceClassification"
    mlp = export_bma(mlp_run, str(tmp_path / "bma-mlp"), num_samples=2, seed=0)
    assert {f for f in os.listdir(mlp) if f.endswith(".py")} == wrapper | builtin
    assert json.load(open(os.path.join(mlp, "config.json")))["auto_map"]["AutoModelForSequenceClassification"] \
        == "builtin_members.StarBMAForSequenceClassification"


def test_three_load_paths_give_identical_predictions(mlp_run, cnn_run, test_inputs, tmp_path):
    from transformers import AutoProcessor

    dirs = {
        "mlp": export_bma(mlp_run, str(tmp_path / "bma-mlp"), num_samples=4, seed=0),
        "cnn": export_bma(cnn_run, str(tmp_path / "bma-cnn"), num_samples=3, seed=0),
        "bert": _bert_bma(tmp_path),
        "resnet": _resnet_bma(tmp_path),
    }
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 20, 20, 3), generator=gen, dtype=torch.uint8)
    inputs = str(tmp_path / "inputs.safetensors")
    save_file({"x": test_inputs[:16].contiguous(), "images": images}, inputs)

    # reference: this process, classes imported from star_merge
    ref = {}
    with torch.no_grad():
        for key in ("mlp", "cnn"):
            ref[key] = load_bma(dirs[key])(input_values=test_inputs[:16]).logits
        tok = AutoProcessor.from_pretrained(dirs["bert"])
        ref["bert"] = load_bma(dirs["bert"])(**tok(TEXTS, return_tensors="pt", padding=True)).logits
        from PIL import Image

        proc = AutoProcessor.from_pretrained(dirs["resnet"])
        pixels = proc([Image.fromarray(a) for a in images.numpy()], return_tensors="pt")["pixel_values"]
        ref["resnet"] = load_bma(dirs["resnet"])(pixel_values=pixels).logits
    common = {"DIRS": dirs, "INPUTS": inputs, "TEXTS": TEXTS}

    installed = _run_fresh(
        "import star_merge.bma\n" + _INPUTS + _AUTO + _FINISH,
        tmp_path,
        KW={},
        OUT=str(tmp_path / "p1.safetensors"),
        EXPECT_STAR_MERGE=True,
        EXPECT_MODULE="star_merge",
        **common,
    )
    remote = _run_fresh(
        _HIDE_STAR_MERGE + _INPUTS + _AUTO + _FINISH,
        tmp_path,
        KW={"trust_remote_code": True},
        OUT=str(tmp_path / "p2.safetensors"),
        EXPECT_STAR_MERGE=False,
        EXPECT_MODULE="transformers_modules",
        **common,
    )
    piped = _run_fresh(
        _HIDE_STAR_MERGE + _INPUTS + _PIPELINE + _FINISH,
        tmp_path,
        OUT=str(tmp_path / "p3.safetensors"),
        EXPECT_STAR_MERGE=False,
        EXPECT_MODULE="transformers_modules",
        **common,
    )
    for key, expected in ref.items():
        torch.testing.assert_close(installed[key], expected, rtol=0, atol=0, msg=f"{key}: path 1")
        torch.testing.assert_close(remote[key], expected, rtol=1e-6, atol=1e-6, msg=f"{key}: path 2")
        if key in piped:
            torch.testing.assert_close(piped[key], expected, rtol=1e-5, atol=1e-5, msg=f"{key}: pipeline")
    assert set(piped) == {"bert", "resnet"}


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(mlp_run, tmp_path):
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        export_bma(mlp_run, str(tmp_path / "x"), num_samples=0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        StarBMAConfig(member_config=StarMLPConfig().to_dict(), num_samples=0)
    with pytest.raises(ValueError, match="unknown t distribution"):
        export_bma(mlp_run, str(tmp_path / "x"), t_distribution="gaussian")
    with pytest.raises(ValueError, match="beta"):
        StarBMAConfig(member_config=StarMLPConfig().to_dict(), t_distribution="beta(0,1)")

    star = StarMLPForClassification(StarMLPConfig(hidden_sizes=[8]))
    wider = StarMLPForClassification(StarMLPConfig(hidden_sizes=[9])).state_dict()
    with pytest.raises(ValueError, match=r"anchor 'b': tensor 'layers.0.weight' has shape \(9, 40\)"):
        build_bma(star, {"a": star.state_dict(), "b": wider})
    deeper = StarMLPForClassification(StarMLPConfig(hidden_sizes=[8, 8])).state_dict()
    with pytest.raises(ValueError, match="anchor 'b' has the extra tensor 'layers.1.bias'"):
        build_bma(star, {"a": star.state_dict(), "b": deeper})
    with pytest.raises(ValueError, match="at least one aligned anchor"):
        build_bma(star, {})
    regressor = StarMLPForClassification(StarMLPConfig(hidden_sizes=[8], num_labels=1))
    with pytest.raises(ValueError, match="not single-label classifiers"):
        build_bma(regressor, {"a": regressor.state_dict()})
    cnn = StarCNN1dForClassification(StarCNN1dConfig(channels=[4]))
    with pytest.raises(ValueError, match="has BatchNorm: pass bn_dataloader"):
        build_bma(cnn, {"a": cnn.state_dict()})

    unaligned = str(tmp_path / "unaligned-run")
    shutil.copytree(mlp_run, unaligned, ignore=shutil.ignore_patterns("bma", "checkpoints"))
    perms = RunDirectory(unaligned).anchor_permutations()
    del perms["anchor-02"]
    save_permutations(os.path.join(unaligned, "anchor_permutations.safetensors"), perms)
    with pytest.raises(ValueError, match="no permutation for anchor 'anchor-02'"):
        export_bma(unaligned)
    assert not os.path.exists(os.path.join(unaligned, "bma"))

    out = export_bma(mlp_run, str(tmp_path / "bma"), num_samples=2)
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        export_bma(mlp_run, out, num_samples=2)
    with pytest.raises(ValueError, match="load it with the matching class"):
        StarBMAForImageClassification.from_pretrained(out)

    weights = os.path.join(out, "model.safetensors")
    tensors = load_file(weights)
    save_file({k: v for k, v in tensors.items() if k != "anchors.2.classifier.bias"}, weights)
    with pytest.raises(
        ValueError, match="not a complete star-merge BMA: missing keys 'anchors.2.classifier.bias'"
    ):
        load_bma(out)
    save_file(tensors, weights)
    load_bma(out)  # intact again
    config_path = os.path.join(out, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["num_anchors"], config["member_names"] = 4, [*config["member_names"], "anchor-99"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="missing keys 'anchors.3.*num_anchors=4"):
        load_bma(out)


def test_cli_export_bma(mlp_run, tmp_path, capsys):
    from star_merge.cli import main  # the console entry point turns errors into one line and exit 2

    out = str(tmp_path / "cli-bma")
    argv = ["export-bma", mlp_run, "--output_dir", out, "--samples", "3", "--seed", "5", "--t_distribution", "beta(2,2)"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == out
    config = StarBMAConfig.from_pretrained(out)
    assert (config.num_samples, config.seed, config.t_distribution) == (3, 5, "beta")

    assert main(["export-bma", mlp_run, "--output_dir", out]) == 2  # exists, no --overwrite
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert main(["export-bma", mlp_run, "--output_dir", str(tmp_path / "y"), "--samples", "0"]) == 2
    assert "num_samples must be >= 1" in capsys.readouterr().err
    assert main(["export-bma", mlp_run, "--output_dir", out, "--samples", "2", "--overwrite"]) == 0
    assert StarBMAConfig.from_pretrained(out).num_samples == 2
