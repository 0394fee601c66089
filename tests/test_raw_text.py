"""Raw text through the whole product: tiny BERTs saved with the real all-MiniLM-L6-v2 tokenizer, a dataset of
Python docstrings (``text`` + ``label``), recipes/star.py with --text_column, pipelines on star/ and bma/."""

import json
import os
import subprocess
import sys

import pytest
import torch

from raw_populations import docstring_dataset, minilm_tokenizer_folder, tiny_bert_config, train_population

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "star.py")


@pytest.fixture(scope="module")
def text_population(tmp_path_factory):
    from transformers import AutoTokenizer

    base = tmp_path_factory.mktemp("text")
    data = docstring_dataset(str(base / "docstrings"))
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_folder())
    folders = train_population(tiny_bert_config(), tokenizer, data, str(base / "pop"), ["a0", "a1", "h0"], epochs=3)
    return {"base": base, "data": data, "tokenizer": tokenizer, "anchors": folders[:2], "held_out": folders[2:]}


@pytest.fixture(scope="module")
def text_run(text_population):
    p = text_population
    out = p["base"] / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, RECIPE, "--anchors", *p["anchors"], "--held_out", *p["held_out"], "--dataset_name",
           p["data"], "--text_column", "text", "--max_seq_length", "64", "--num_train_epochs", "2",
           "--per_device_train_batch_size", "32", "--learning_rate", "0.002", "--bma_samples", "2", "--eval_num_points", "5",
           "--output_dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _texts(p, n=12):
    from datasets import load_from_disk

    return load_from_disk(p["data"])["test"]["text"][:n]


def test_star_and_bma_load_with_pipeline_alone_and_match_direct_calls(text_population, text_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    import star_merge  # noqa: F401  (registers the BMA classes, as the BMA card says)

    texts = _texts(text_population)
    assert len({len(t) for t in texts}) > 3  # variable lengths
    for folder in ("star", "bma"):
        path = str(text_run / folder)
        assert os.path.isfile(os.path.join(path, "tokenizer.json")), os.listdir(path)
        pipe = pipeline("text-classification", model=path, top_k=None)
        got = pipe(texts)
        tok = AutoTokenizer.from_pretrained(minilm_tokenizer_folder())  # the population's own tokenizer
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        for text, scores in zip(texts, got):
            with torch.no_grad():
                probs = model(**tok(text, return_tensors="pt", truncation=True)).logits.softmax(-1)[0]
            by_label = {s["label"]: s["score"] for s in scores}
            expected = {model.config.id2label[i]: float(p) for i, p in enumerate(probs)}
            assert by_label.keys() == expected.keys()
            for k in expected:
                assert by_label[k] == pytest.approx(expected[k], abs=1e-5), (folder, text[:40])
    # the population's tokenizer, not an empty one: no word of an English docstring maps to [UNK]
    star_tok = AutoTokenizer.from_pretrained(str(text_run / "star"))
    ids = star_tok(texts[0])["input_ids"]
    assert star_tok.unk_token_id not in ids and len(star_tok) == len(text_population["tokenizer"])


def test_card_pipeline_tag_and_manifest_processor(text_run):
    card = (text_run / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    manifest = json.loads((text_run / "starlight.json").read_text())
    assert manifest["processor"] and manifest["data"]["text_column"] == "text"


def test_padding_does_not_change_the_loss(text_population):
    """A batch padded to its longest text and to 20 more tokens gives the loss of the unpadded examples."""
    from transformers import AutoModelForSequenceClassification

    from star_merge.tasks import task_for
    from star_merge.tasks.text import token_collator

    p = text_population
    model = AutoModelForSequenceClassification.from_pretrained(p["anchors"][0]).eval()
    task = task_for(model)
    tok = p["tokenizer"]
    texts = _texts(p, 8)
    labels = torch.tensor([i % 4 for i in range(8)])
    examples = [{**tok(t, truncation=True, max_length=64), "labels": labels[i]} for i, t in enumerate(texts)]
    batch = token_collator(tok)(examples)
    assert {"input_ids", "attention_mask", "token_type_ids"} <= set(task.model_inputs(model, batch))
    assert bool((batch["attention_mask"] == 0).any())  # some padding in the batch
    width = batch["input_ids"].shape[1]
    wider = {k: v.clone() for k, v in batch.items()}
    for k, fill in (("input_ids", tok.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        wider[k] = torch.cat([batch[k], torch.full((8, 20), fill, dtype=torch.long)], dim=1)
    with torch.no_grad():
        loss_a = task.loss(model, batch)
        loss_b = task.loss(model, wider)
        # independent reference: each example alone, no padding at all
        alone = torch.stack([
            torch.nn.functional.cross_entropy(
                model(**{k: torch.tensor([v]) for k, v in tok(t, truncation=True, max_length=64).items()}).logits,
                labels[i:i + 1])
            for i, t in enumerate(texts)]).mean()
    assert wider["input_ids"].shape[1] == width + 20
    assert float(loss_a) == pytest.approx(float(alone), abs=1e-5)
    assert float(loss_b) == pytest.approx(float(alone), abs=1e-5)
    # and the mask matters: dropping it changes the loss (padding would be read as tokens)
    no_mask = {k: v for k, v in wider.items() if k != "attention_mask"}
    with torch.no_grad():
        assert abs(float(task.loss(model, no_mask)) - float(alone)) > 1e-4


def test_star_to_held_out_barrier_measured(text_run):
    """The report holds both barrier groups (the numbers are quoted in the issue's closing note)."""
    report = json.loads((text_run / "report.json").read_text())
    s = report["summary"]
    barriers = {g: s[g]["test_loss_barrier"] for g in ("star_vs_held_out", "anchor_vs_held_out")}
    print("TEXT barriers", json.dumps(barriers))
    assert barriers["star_vs_held_out"]["n"] == 1 and barriers["anchor_vs_held_out"]["n"] == 2


def test_every_export_carries_the_tokenizer(text_population, text_run, tmp_path):
    """push uploads the tokenizer to both repos; `star-merge align` output loads in a pipeline alone and
    predicts like B (the aligned copy computes B's function)."""
    from transformers import pipeline

    from star_merge.cli import main
    from star_merge.hub.push import upload_plan

    plan = upload_plan(str(text_run), "org/star", bma_repo_id="org/star-bma")
    for repo in ("org/star", "org/star-bma"):
        files = {f.path_in_repo for f in plan if f.repo_id == repo}
        assert {"tokenizer.json", "tokenizer_config.json"} <= files, files
    a, b = text_population["anchors"][0], text_population["held_out"][0]
    out = str(tmp_path / "aligned")
    assert main(["align", a, b, "--output_dir", out]) == 0
    texts = _texts(text_population, 6)
    aligned = pipeline("text-classification", model=out, top_k=None)(texts)
    original = pipeline("text-classification", model=b, top_k=None)(texts)
    for x, y in zip(aligned, original):
        expected = {s["label"]: s["score"] for s in y}
        assert {s["label"] for s in x} == set(expected)
        for s in x:
            assert s["score"] == pytest.approx(expected[s["label"]], abs=1e-4)


def test_pretokenised_variable_length_data_is_padded_per_batch(tmp_path):
    """Already-tokenised rows of different lengths keep every tokenizer output and are padded per batch exactly
    as transformers' DataCollatorWithPadding pads them (the independent reference)."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from star_merge.data import DataArguments, load_task_dataset, make_dataloader, prepare_dataset
    from star_merge.tasks import task_for

    tok = AutoTokenizer.from_pretrained(minilm_tokenizer_folder())
    texts = ["Remove a file.", "Return a copy of the string with leading and trailing whitespace removed.",
             "Join two paths.", "Split the string at the last occurrence of the separator and return a tuple."]
    enc = tok(texts)
    split = Dataset.from_dict({**enc, "label": [0, 1, 0, 1], "id": [10, 11, 12, 13]})
    DatasetDict(train=split, test=split).save_to_disk(str(tmp_path / "tok"))
    args = DataArguments(dataset_name=str(tmp_path / "tok"))
    raw = load_task_dataset(args)
    assert set(raw["train"].column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    ds, collate = prepare_dataset(raw, task_for(tiny_bert_config()), tok, args)
    batch = next(iter(make_dataloader(ds["train"], 4, collate_fn=collate)))
    ref = DataCollatorWithPadding(tok)([{k: enc[k][i] for k in enc} | {"labels": i % 2} for i in range(4)])
    for k in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert torch.equal(batch[k], ref[k]), k
    # without a tokenizer in the population: padded with id 0 under a zero attention mask
    ds, collate = prepare_dataset(raw, task_for(tiny_bert_config()), None, args)
    batch0 = next(iter(make_dataloader(ds["train"], 4, collate_fn=collate)))
    assert torch.equal(batch0["attention_mask"], ref["attention_mask"]) and tok.pad_token_id == 0
    assert torch.equal(batch0["input_ids"], ref["input_ids"])


def test_evaluate_evaluator_and_metric_modules_give_the_reports_numbers(text_population, text_run):
    """`evaluate.evaluator("text-classification")` on the star and BMA exports equals the report's test accuracy;
    star-merge's shipped NLL / ECE modules on the pipelines' probabilities equal the report's NLL / ECE to 1e-6.
    The pipeline truncates at the run's --max_seq_length 64, as the run did."""
    evaluate = pytest.importorskip("evaluate", reason="the `evaluate` dependency is not installed here")
    from datasets import load_from_disk
    from transformers import AutoTokenizer, pipeline

    import star_merge

    report = json.loads((text_run / "report.json").read_text())
    data = load_from_disk(text_population["data"])["test"]
    accuracy = evaluate.load(star_merge.metric_path("accuracy"))
    nll, ece = (evaluate.load(star_merge.metric_path(n)) for n in ("nll", "ece"))
    for folder, scores in (("star", report["models"]["star"]), ("bma", report["ensembles"]["bma"])):
        path = str(text_run / folder)
        pipe = pipeline("text-classification", model=path,
                        tokenizer=AutoTokenizer.from_pretrained(path, model_max_length=64))
        got = evaluate.evaluator("text-classification").compute(
            model_or_pipeline=pipe, data=data, metric=accuracy, input_column="text", label_column="label",
            label_mapping=pipe.model.config.label2id)
        assert got["accuracy"] == pytest.approx(scores["test"]["accuracy"], abs=1e-9), folder
        rows = pipe(list(data["text"]), top_k=None, truncation=True)
        probs = [[next(r["score"] for r in row if r["label"] == pipe.model.config.id2label[c])
                  for c in range(len(row))] for row in rows]
        assert nll.compute(predictions=probs, references=data["label"])["nll"] == pytest.approx(
            scores["test"]["nll"], abs=1e-6), folder
        assert ece.compute(predictions=probs, references=data["label"])["ece"] == pytest.approx(
            scores["test"]["ece"], abs=1e-6), folder
