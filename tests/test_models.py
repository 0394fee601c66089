"""Built-in models: HF round trip, Auto classes, function invariance under their permutation specs."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

import star_merge as sm
from star_merge.models import StarCNN1dConfig, StarMLPConfig


def nontrivial_bn(model):
    g = torch.Generator().manual_seed(123)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.5)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=g) * 1.5 + 0.5)


@pytest.mark.parametrize(
    "config",
    [StarMLPConfig(hidden_sizes=[33, 17, 9]), StarMLPConfig(hidden_sizes=[64]), StarCNN1dConfig(channels=[5, 7, 11]),
     StarCNN1dConfig(channels=[16, 8], kernel_size=3)],
    ids=["mlp3", "mlp1", "cnn3", "cnn2k3"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_function_invariance_and_movement(config, seed):
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    nontrivial_bn(model)
    spec = sm.spec_for(model)
    x = torch.randn(16, 40)
    with torch.no_grad():
        ref = model(input_values=x).logits
    sd = model.state_dict()
    perm = sm.random_permutation(spec, seed)
    permuted = sm.apply_permutation(spec, perm, sd)
    moved = sum((permuted[k] != sd[k]).sum().item() for k in spec.permuted_tensors)
    assert moved > 0.5 * spec.num_permuted_elements()
    model.load_state_dict(permuted)
    with torch.no_grad():
        out = model(input_values=x).logits
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # weight matching undoes the permutation exactly
    res = sm.weight_matching(spec, sd, permuted, seed=seed)
    back = sm.apply_permutation(spec, res.perm, permuted)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_save_and_reload_with_auto_classes(tmp_path):
    config = StarCNN1dConfig(channels=[4, 6], num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).num_labels == 3
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(4, 40)
    out = again(input_values=x, labels=torch.tensor([0, 1, 2, 0]))
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    assert torch.equal(out.logits, model(input_values=x).logits)


def test_spec_from_config_equals_spec_from_model():
    config = StarMLPConfig(hidden_sizes=[8, 9])
    model = AutoModelForSequenceClassification.from_config(config)
    assert sm.spec_for(config).axes_to_perm == sm.spec_for(model).axes_to_perm


def test_plain_module_and_unknown_type_give_clear_errors():
    with pytest.raises(sm.UnsupportedModelError, match="plain nn.Module"):
        sm.spec_for(torch.nn.Linear(3, 3))
    from transformers import T5Config

    with pytest.raises(sm.UnsupportedModelError, match="'t5'.*register_adapter"):
        sm.spec_for(T5Config(d_model=8, num_layers=1, num_heads=2, d_kv=4, d_ff=8, vocab_size=10))
