"""Language-model populations end to end: tiny GPT-NeoX (causal) and BERT (masked) populations trained here on a
local corpus with a tokenizer built here, through ``accelerate launch recipes/star.py``; the BMA through pipelines;
an MLM Starlight run resumed after a crash."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lm_fixtures import train_lm_population, write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def causal_population(tmp_path_factory, corpus):
    return train_lm_population(tmp_path_factory.mktemp("neox"), corpus, "causal", seeds=range(5), epochs=1,
                               block_size=BLOCK, max_train_samples=96)


@pytest.fixture(scope="module")
def masked_population(tmp_path_factory, corpus):
    return train_lm_population(tmp_path_factory.mktemp("bert"), corpus, "masked", seeds=range(5), epochs=1,
                               block_size=BLOCK, max_train_samples=96)


def _launch(out, population, corpus, port, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           os.path.join(ROOT, "recipes", "star.py"), "--anchors", *population[:3], "--held_out", *population[3:],
           "--dataset_name", corpus, "--block_size", str(BLOCK), "--num_train_epochs", "1",
           "--per_device_train_batch_size", "32", "--max_train_samples", "64", "--max_eval_samples", "32",
           "--eval_num_points", "3", "--bma_samples", "2", "--learning_rate", "1e-3", "--output_dir", str(out), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def _check_report(report, md, task):
    assert report["task"] == {"name": task, "unit": "token"}
    assert len(report["barriers"]["star_vs_held_out"]) == 2 and len(report["barriers"]["anchor_vs_held_out"]) == 6
    for group in ("star_vs_held_out", "anchor_vs_held_out"):
        for row in report["barriers"][group]:
            losses = row["test"]["losses"]
            assert all(math.isfinite(x) and x > 0 for x in losses)
            chord_mid = (losses[0] + losses[-1]) / 2
            assert math.isclose(row["test"]["loss_barrier"], max(0.0, losses[1] - chord_mid), abs_tol=1e-9)
    assert "| star ↔ held-out | 2 |" in md and "| anchor ↔ held-out | 6 |" in md
    assert "per-token CE barrier" in md and "token accuracy" in md and "perplexity" in md
    assert "bma" in report["ensembles"] and "test" in report["ensembles"]["bma"], report["ensembles"]


def _bma_matches_members(bma, batch, head_logits):
    """BMA logits = log mean over samples of the members' softmax, members rebuilt independently."""
    from star_merge.modeling import build_model

    probs = []
    for s in range(bma.config.num_samples):
        member = build_model(bma.member_config)
        member.load_state_dict(bma.sample_state_dict(s))
        probs.append(head_logits(member.eval()(**batch)).float().softmax(-1))
    expected = torch.stack(probs).mean(0).log()
    assert torch.allclose(bma(**batch).logits, expected, atol=1e-5)


_LM_LOAD = """
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, pipeline
Auto = AutoModelForCausalLM if CAUSAL else AutoModelForMaskedLM
tok = AutoTokenizer.from_pretrained(DIR)
m = Auto.from_pretrained(DIR, **KW)
batch = tok([TEXT], return_tensors="pt", add_special_tokens=not CAUSAL)
with torch.no_grad():
    out = {"logits": m(**batch).logits}
if CAUSAL:
    text = pipeline("text-generation", model=DIR, **KW)(TEXT, max_new_tokens=4, do_sample=False)[0]["generated_text"]
    out["generated"] = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
else:
    top = pipeline("fill-mask", model=DIR, **KW)(TEXT, top_k=3)
    out["top"] = torch.tensor([float(r["token"]) for r in top] + [r["score"] for r in top])
modules = {type(m).__module__.split(".")[0]}
"""


def _three_load_paths(bma_path, tmp_path, text, causal):
    """load_bma here; ``AutoModelFor…`` + pipeline after ``import star_merge.bma``; the same with
    ``trust_remote_code=True`` in a process where star_merge cannot be imported: the same logits and pipeline
    output every time."""
    from test_bma import _FINISH, _HIDE_STAR_MERGE, _run_fresh
    from transformers import AutoTokenizer, pipeline

    from star_merge.bma import load_bma

    tok = AutoTokenizer.from_pretrained(bma_path)
    with torch.no_grad():
        ref = load_bma(bma_path)(**tok([text], return_tensors="pt", add_special_tokens=not causal)).logits
    if causal:
        generated = pipeline("text-generation", model=bma_path)(text, max_new_tokens=4, do_sample=False)
        ref_extra = tok(generated[0]["generated_text"], return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    else:
        top = pipeline("fill-mask", model=bma_path)(text, top_k=3)
        ref_extra = torch.tensor([float(r["token"]) for r in top] + [r["score"] for r in top])
    common = {"DIR": bma_path, "TEXT": text, "CAUSAL": causal}
    installed = _run_fresh("import star_merge.bma\n" + _LM_LOAD + _FINISH, tmp_path, KW={},
                           OUT=str(tmp_path / "p1.safetensors"), EXPECT_STAR_MERGE=True, EXPECT_MODULE="star_merge",
                           **common)
    remote = _run_fresh(_HIDE_STAR_MERGE + _LM_LOAD + _FINISH, tmp_path, KW={"trust_remote_code": True},
                        OUT=str(tmp_path / "p2.safetensors"), EXPECT_STAR_MERGE=False,
                        EXPECT_MODULE="transformers_modules", **common)
    extra = "generated" if causal else "top"
    for got in (installed, remote):
        torch.testing.assert_close(got["logits"], ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got[extra], ref_extra, rtol=1e-5, atol=1e-6)


def test_causal_lm_population_end_to_end(tmp_path, causal_population, corpus):
    from transformers import AutoTokenizer, pipeline

    from star_merge.bma import load_bma

    report, md = _launch(tmp_path / "run", causal_population, corpus, 29541)
    _check_report(report, md, "causal-lm")
    bma_path = str(tmp_path / "run" / "bma")
    bma = load_bma(bma_path)
    tok = AutoTokenizer.from_pretrained(bma_path)
    batch = tok(["Return the number of items in the list"], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        _bma_matches_members(bma, dict(batch), lambda out: out.logits)
        # greedy generation = repeated argmax of the BMA's next-token distribution (computed here by hand)
        ids = batch["input_ids"]
        for _ in range(4):
            ids = torch.cat([ids, bma(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    gen = pipeline("text-generation", model=bma_path)
    text = gen("Return the number of items in the list", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text == tok.decode(ids[0])
    torch.manual_seed(0)
    sampled = gen("Return the", max_new_tokens=6, do_sample=True, top_k=0)[0]["generated_text"]
    assert sampled.startswith("Return the") and len(sampled) > len("Return the")
    _three_load_paths(bma_path, tmp_path, "Return the number of items in the list", causal=True)


def test_masked_lm_population_end_to_end(tmp_path, masked_population, corpus):
    from transformers import AutoTokenizer, pipeline

    from star_merge.bma import load_bma

    report, md = _launch(tmp_path / "run", masked_population, corpus, 29542)
    _check_report(report, md, "masked-lm")
    bma_path = str(tmp_path / "run" / "bma")
    bma = load_bma(bma_path)
    tok = AutoTokenizer.from_pretrained(bma_path)
    batch = tok(["Return the [MASK] of items"], return_tensors="pt")
    with torch.no_grad():
        _bma_matches_members(bma, dict(batch), lambda out: out.logits)
        at_mask = bma(**batch).logits[0, batch["input_ids"][0].tolist().index(tok.mask_token_id)].softmax(-1)
    fill = pipeline("fill-mask", model=bma_path)
    top = fill("Return the [MASK] of items", top_k=3)
    assert [r["token"] for r in top] == at_mask.topk(3).indices.tolist()
    assert all(math.isclose(r["score"], float(at_mask[r["token"]]), rel_tol=1e-4) for r in top)
    _three_load_paths(bma_path, tmp_path, "Return the [MASK] of items", causal=False)


def test_masked_lm_resume_after_crash_is_bit_identical(tmp_path, monkeypatch, masked_population, corpus):
    from star_merge.data import DataArguments, load_task_dataset, task_and_processor
    from star_merge.modeling import load_checkpoint, load_config
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    data_args = DataArguments(dataset_name=corpus, block_size=BLOCK, max_train_samples=64, max_eval_samples=16)
    task, tok = task_and_processor(data_args, masked_population[0])
    dataset = load_task_dataset(data_args, task=task, processor=tok)
    config = load_config(masked_population[0])
    anchors = [(f"anchor-{i}", load_checkpoint(p).state_dict()) for i, p in enumerate(masked_population[:2])]

    def args(out):
        return StarlightConfig(output_dir=str(out), num_train_epochs=3, per_device_train_batch_size=16,
                               learning_rate=1e-3, seed=0, checkpointing_steps=3, checkpoints_total_limit=None)

    seen = []
    original_call = type(task.collator).__call__

    def spy(self, examples):
        batch = original_call(self, examples)
        seen.append((self.epoch, (batch["labels"] != -100).sum().item()))
        return batch

    monkeypatch.setattr(type(task.collator), "__call__", spy)
    full = StarlightTrainer(model=config, args=args(tmp_path / "a"), anchors=anchors, train_dataset=dataset["train"],
                            task=task).train()
    assert {e for e, _ in seen} == {0, 1, 2}  # the masking was told every epoch
    saves = {"n": 0}
    original = StarlightTrainer._save_state

    def crash_on_third_save(self):
        original(self)
        saves["n"] += 1
        if saves["n"] == 3:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(StarlightTrainer, "_save_state", crash_on_third_save)
    with pytest.raises(KeyboardInterrupt):
        StarlightTrainer(model=config, args=args(tmp_path / "b"), anchors=anchors, train_dataset=dataset["train"],
                         task=task).train()
    monkeypatch.setattr(StarlightTrainer, "_save_state", original)
    resumed_args = args(tmp_path / "b")
    resumed_args.resume_from_checkpoint = "latest"
    resumed = StarlightTrainer(model=config, args=resumed_args, anchors=anchors, train_dataset=dataset["train"],
                               task=task).train()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed MLM star differs from the uninterrupted one"


def test_barrier_between_two_causal_lms_is_per_token(causal_population, corpus):
    """`star-merge barrier` on LM checkpoints: per-token CE along the path; endpoints equal the models' own loss."""
    from star_merge.data import DataArguments, load_task_dataset, task_and_processor
    from star_merge.evaluation import evaluate_loss_accuracy
    from star_merge.evaluation.barrier import barrier_between
    from star_merge.data import make_dataloader
    from star_merge.modeling import load_checkpoint

    args = DataArguments(dataset_name=corpus, block_size=BLOCK, max_train_samples=16, max_eval_samples=16)
    result = barrier_between(causal_population[0], causal_population[1], args, num_points=3, progress=False)
    task, tok = task_and_processor(args, causal_population[0])
    test = load_task_dataset(args, task=task, processor=tok)["test"]
    a = load_checkpoint(causal_population[0])
    with torch.no_grad():  # the models' own labels= loss, token-weighted over the split
        total = sum(float(a(input_ids=b["input_ids"], labels=b["labels"]).loss) * b["input_ids"].shape[0]
                    for b in make_dataloader(test, 4))
    assert math.isclose(result.curves["test"].losses[0], total / len(test), rel_tol=1e-5)
    assert result.curves["test"].losses[0] == pytest.approx(evaluate_loss_accuracy(a, make_dataloader(test, 8))[0])


def test_pretraining_star_carries_the_next_sentence_head_from_its_init(tmp_path, corpus):
    """BertForPreTraining: Starlight trains the masked-LM loss only (docs/language_models.md), so the NSP head and
    the pooler it reads get no gradient and are exactly the init's (here anchor 0's); the rest of the star moves."""
    from star_merge.data import DataArguments, load_task_dataset, task_and_processor
    from star_merge.modeling import load_checkpoint, load_config
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    members = train_lm_population(tmp_path / "pop", corpus, "masked", seeds=range(2), epochs=1, block_size=BLOCK,
                                  max_train_samples=64, architectures=["BertForPreTraining"])
    data_args = DataArguments(dataset_name=corpus, block_size=BLOCK, max_train_samples=64, max_eval_samples=16)
    task, tok = task_and_processor(data_args, members[0])
    assert task.name == "masked-lm"
    dataset = load_task_dataset(data_args, task=task, processor=tok)
    anchors = [(f"anchor-{i}", load_checkpoint(p).state_dict()) for i, p in enumerate(members)]
    args = StarlightConfig(output_dir=str(tmp_path / "run"), num_train_epochs=2, per_device_train_batch_size=16,
                           learning_rate=3e-3, seed=0, init="anchor:0")
    star = StarlightTrainer(model=load_config(members[0]), args=args, anchors=anchors, train_dataset=dataset["train"],
                            task=task).train().model.state_dict()
    init = anchors[0][1]
    carried = [k for k in star if k.startswith(("cls.seq_relationship.", "bert.pooler."))]
    assert len(carried) == 4
    assert all(torch.equal(star[k], init[k]) for k in carried)
    trained = [k for k in star if k not in carried and star[k].is_floating_point()]
    moved = [k for k in trained if not torch.equal(star[k], init[k])]
    assert len(moved) > 0.9 * len(trained), sorted(set(trained) - set(moved))
