"""The Trainer-shaped API: a star trained in a few lines of user code is linearly connected to its anchors."""

import pytest
import torch
from torch import nn

import star_merge as sm
from star_merge.data import DataArguments, load_task_dataset
from star_merge.models import StarMLPConfig
from star_merge.population import train_population
from star_merge.population.training import TrainArguments


def _ce(model, state_dict, x, y) -> float:
    """Test cross-entropy of ``model`` loaded with ``state_dict``, computed directly (no star_merge code)."""
    model.load_state_dict(state_dict)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model.eval()(input_values=x).logits, y))


def _lerp(a, b, t):
    return {k: torch.lerp(a[k].float(), b[k].float(), t) for k in a}


def test_trainer_shaped_api_learns_a_star_connected_to_its_anchors(tmp_path):
    dataset = load_task_dataset(DataArguments(num_samples=1000))
    members = train_population(StarMLPConfig(hidden_sizes=[64]), dataset, str(tmp_path / "pop"), 2, 0,
                               TrainArguments(num_train_epochs=8, learning_rate=3e-3, per_device_train_batch_size=64),
                               progress=False)
    paths = [m.path for m in members]

    # ---- user code: the whole Starlight run
    args = sm.StarlightConfig(num_train_epochs=6, learning_rate=3e-3, per_device_train_batch_size=64, seed=0)
    trainer = sm.StarlightTrainer(args=args, anchors=paths, train_dataset=dataset["train"])
    result = trainer.train()
    trainer.save_model(str(tmp_path / "star"))
    # ----

    star_sd = {k: v.clone() for k, v in result.model.state_dict().items()}
    from star_merge.modeling import load_checkpoint

    reloaded = load_checkpoint(str(tmp_path / "star"))
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in star_sd.items())

    test = dataset["test"].with_format("torch")
    rows = test[:]
    x, y = rows["input_values"], rows["labels"]
    anchors = [load_checkpoint(p).state_dict() for p in paths]
    container = load_checkpoint(paths[0])
    naive_mid = _ce(container, _lerp(anchors[0], anchors[1], 0.5), x, y)
    spec = sm.spec_for(container)
    for name, sd in zip(trainer.anchor_names, anchors):
        aligned = sm.apply_permutation(spec, result.perms[name], sd)
        # t = 1 is the anchor itself: permuting it changes nothing about its function
        assert abs(_ce(container, aligned, x, y) - _ce(container, sd, x, y)) < 1e-4
        star_path = max(_ce(container, _lerp(star_sd, aligned, t), x, y) for t in (0.25, 0.5, 0.75))
        assert star_path < naive_mid, (name, star_path, naive_mid)


def test_push_to_hub_uploads_the_saved_star_offline(monkeypatch):
    """StarlightTrainer.push_to_hub through a fake HfApi bound to the real methods' signatures: what is
    uploaded is the checkpoint save_model writes (the trained weights, bit for bit), to the repo asked, with
    its options."""
    import json

    import huggingface_hub
    from safetensors.torch import load as load_safetensors

    from fixtures import build_model, make_trainer
    from hf_cache import fake_sha
    from test_hub import FakeHfApi

    FakeHfApi.instances, FakeHfApi.fail_on = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    dataset = load_task_dataset(DataArguments(num_samples=200))
    config = StarMLPConfig(hidden_sizes=[8])
    anchors = [(f"a{i}", build_model(config, i).state_dict()) for i in range(2)]
    args = sm.StarlightConfig(num_train_epochs=1, learning_rate=3e-3, per_device_train_batch_size=64, seed=0)
    trainer = make_trainer(args, config, anchors, dataset)
    trainer.eval_dataset = dataset["test"]
    result = trainer.train()

    url = trainer.push_to_hub("me/star", private=True, token="hf_x", commit_message="first star")

    (api,) = FakeHfApi.instances
    assert api.token == "hf_x"
    (create, repo, options), (upload, upload_repo, uploaded) = api.calls
    assert (create, repo, options) == ("create_repo", "me/star", {"repo_type": "model", "private": True,
                                                                  "exist_ok": True})
    assert (upload, upload_repo, uploaded["commit_message"]) == ("upload_folder", "me/star", "first star")
    assert url == f"https://huggingface.co/me/star/commit/{fake_sha('me/star')}"
    staged = uploaded["staged"]
    assert set(staged) == {"config.json", "model.safetensors", "training_info.json", "README.md"}, sorted(staged)
    card = staged["README.md"].decode()  # the one publishing path: a card with the star's evaluation
    assert "Starlight star model" in card and "model-index" in card and "Eval accuracy (star)" in card
    rows = dataset["test"].with_format("torch")[:]
    with torch.no_grad():  # the model-index value, computed here directly
        ce = float(nn.functional.cross_entropy(result.model.eval()(input_values=rows["input_values"]).logits,
                                               rows["labels"]))
    assert f"Eval loss: {ce:.4f}." in card
    weights = load_safetensors(staged["model.safetensors"])
    expected = result.model.state_dict()
    assert set(weights) == set(expected) and all(torch.equal(weights[k], expected[k]) for k in expected)
    assert json.loads(staged["config.json"])["model_type"] == "star-mlp"
    info = json.loads(staged["training_info.json"])
    assert info["starlight"]["learning_rate"] == 3e-3 and info["history"] == result.history


def test_a_staged_trainer_push_holds_a_card_and_no_absolute_path(monkeypatch, tmp_path):
    """A unique temp path planted in every path-valued setting (output_dir, init) never reaches the staged folder;
    the card is there (the one publishing path refuses a staged folder without one)."""
    import uuid

    import huggingface_hub

    from fixtures import build_model, make_trainer
    from star_merge.hub.publish import PushError, check_staged
    from star_merge.population import save_checkpoint
    from test_hub import FakeHfApi

    FakeHfApi.instances, FakeHfApi.fail_on = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    planted = str(tmp_path / f"planted-{uuid.uuid4().hex}")
    dataset = load_task_dataset(DataArguments(num_samples=200))
    config = StarMLPConfig(hidden_sizes=[8])
    init = save_checkpoint(build_model(config, 0), planted + "-init")
    args = sm.StarlightConfig(num_train_epochs=1, learning_rate=3e-3, per_device_train_batch_size=64, seed=0,
                              output_dir=planted + "-out", init=init)
    trainer = make_trainer(args, config, [(f"a{i}", build_model(config, i).state_dict()) for i in range(2)], dataset)
    trainer.train()
    trainer.push_to_hub("me/star")
    staged = FakeHfApi.instances[0].calls[-1][2]["staged"]
    assert staged["README.md"].strip()
    for name, content in staged.items():
        assert planted.encode() not in content and str(tmp_path).encode() not in content, name
    empty = tmp_path / "no-card"
    empty.mkdir()
    with pytest.raises(PushError, match="no model card"):
        check_staged(str(empty), [])
