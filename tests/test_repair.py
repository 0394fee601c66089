"""REPAIR against hand-computed statistics; a merged BatchNorm model with and without reset against a hand
recomputation."""


import pytest
import torch

from star_merge import apply_permutation, reset_bn_stats, spec_for
from star_merge.evaluation.repair import RepairError, repair_model, repair_sites
from star_merge.matching.merge import merge_models
from star_merge.models.cnn1d import StarCNN1dConfig, StarCNN1dForClassification
from star_merge.models.mlp import StarMLPConfig, StarMLPForClassification

from fixtures import recompute_bn_statistics


def members(cls, cfg, n=3):
    out = []
    for s in range(n):
        torch.manual_seed(10 + s)
        out.append(cls(cfg).eval())
    return out


def batches(seed, n=2, size=64, width=8):
    g = torch.Generator().manual_seed(seed)
    return [{"input_values": torch.randn(size, width, generator=g), "labels": torch.randint(0, 3, (size,), generator=g)}
            for _ in range(n)]


def hand_preacts(sd, x, depth):
    """Pre-activations of every hidden layer of a star-mlp state dict, written out: h = relu(x W^T + b)."""
    out, h = [], x.double()
    for i in range(depth):
        z = h @ sd[f"layers.{i}.weight"].double().T + sd[f"layers.{i}.bias"].double()
        out.append(z)
        h = torch.relu(z)
    return out


def test_repaired_statistics_equal_the_targets_on_held_out_data():
    cfg = StarMLPConfig(input_size=8, hidden_sizes=[16, 12, 10], num_labels=3)
    models = members(StarMLPForClassification, cfg)
    spec = spec_for(models[0])
    weights = [0.5, 0.3, 0.2]
    merged_sd, record = merge_models(models, method="mergemany", weights=weights)
    aligned = [apply_permutation(spec, p, m.state_dict()) for p, m in zip(record.perms, models)]
    held_out = batches(seed=7)
    model = StarMLPForClassification(cfg).eval()
    model.load_state_dict(merged_sd)
    assert repair_sites(model) == ["layers.0", "layers.1", "layers.2"]
    rec = repair_model(model, aligned, weights, held_out)
    assert rec.sites == ["layers.0", "layers.1", "layers.2"]
    x = torch.cat([b["input_values"] for b in held_out])
    repaired = hand_preacts(model.state_dict(), x, 3)
    members_pre = [hand_preacts(sd, x, 3) for sd in aligned]
    before = hand_preacts(merged_sd, x, 3)
    for layer in range(3):
        mean_t = sum(w * z[layer].mean(0) for w, z in zip(weights, members_pre))
        std_t = sum(w * z[layer].std(0, unbiased=False) for w, z in zip(weights, members_pre))
        torch.testing.assert_close(repaired[layer].mean(0), mean_t, rtol=0, atol=1e-5)
        torch.testing.assert_close(repaired[layer].std(0, unbiased=False), std_t, rtol=0, atol=1e-5)
        # the merge really had collapsed statistics (the check above is not vacuous)
        assert (before[layer].std(0, unbiased=False) - std_t).abs().max() > 1e-2
    # a plain checkpoint of the same architecture: the same tensors, no new ones
    assert set(model.state_dict()) == set(merged_sd)


def test_repair_on_an_interpolation_path_targets_the_interpolated_statistics():
    cfg = StarMLPConfig(input_size=8, hidden_sizes=[10], num_labels=3)
    a, b = members(StarMLPForClassification, cfg, 2)
    data = batches(seed=3, n=1)
    t = 0.3
    mid = StarMLPForClassification(cfg).eval()
    mid.load_state_dict({k: (1 - t) * a.state_dict()[k] + t * b.state_dict()[k] for k in a.state_dict()})
    repair_model(mid, [a.state_dict(), b.state_dict()], [1 - t, t], data)
    x = data[0]["input_values"]
    za, zb, zm = (hand_preacts(m.state_dict(), x, 1)[0] for m in (a, b, mid))
    torch.testing.assert_close(zm.std(0, unbiased=False), (1 - t) * za.std(0, unbiased=False) + t * zb.std(0, unbiased=False),
                               rtol=0, atol=1e-5)


def test_repair_refuses_batchnorm_models_and_models_without_sites():
    cfg = StarCNN1dConfig(input_size=12, channels=[4], kernel_size=3, num_labels=3)
    cnn = StarCNN1dForClassification(cfg)
    with pytest.raises(RepairError, match="BatchNorm"):
        repair_model(cnn, [cnn.state_dict()], [1.0], batches(0, width=12))


def test_merged_batchnorm_model_with_and_without_reset():
    cfg = StarCNN1dConfig(input_size=12, channels=[4, 6], kernel_size=3, num_labels=3)
    models = members(StarCNN1dForClassification, cfg)
    for i, m in enumerate(models):  # give every member its own non-trivial running statistics
        recompute_bn_statistics(m.train(), batches(20 + i, width=12))
    spec = spec_for(models[0])
    merged_sd, record = merge_models(models, method="reference")
    aligned = [apply_permutation(spec, p, m.state_dict()) for p, m in zip(record.perms, models)]
    # without reset: the running statistics are the plain mean of the aligned members'
    for k in ("norms.0.running_mean", "norms.1.running_var"):
        torch.testing.assert_close(merged_sd[k], sum(sd[k] for sd in aligned) / 3)
    data = batches(5, width=12)
    model = StarCNN1dForClassification(cfg)
    model.load_state_dict(merged_sd)
    reset_bn_stats(model, data)
    reference = StarCNN1dForClassification(cfg)
    reference.load_state_dict(merged_sd)
    recompute_bn_statistics(reference, data)
    for k in ("norms.0.running_mean", "norms.0.running_var", "norms.1.running_mean", "norms.1.running_var"):
        torch.testing.assert_close(model.state_dict()[k], reference.state_dict()[k])
        assert not torch.allclose(model.state_dict()[k], merged_sd[k])  # the reset changed them
    x = data[0]["input_values"]
    torch.testing.assert_close(model(input_values=x).logits, reference(input_values=x).logits)


def test_repair_on_a_gpt2_language_model_over_tokens():
    """GPT-2: the sites read from the spec are each block's MLP input projection (Conv1D, weight [in, out]); after
    REPAIR their per-channel statistics over every token equal the members' mean (measured here with hooks)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    members_ = []
    for s in range(2):
        torch.manual_seed(s)
        members_.append(GPT2LMHeadModel(cfg).eval())
    merged_sd, record = merge_models(members_, method="reference")
    spec = spec_for(members_[0])
    aligned = [apply_permutation(spec, p, m.state_dict()) for p, m in zip(record.perms, members_)]
    model = GPT2LMHeadModel(cfg).eval()
    model.load_state_dict(merged_sd)
    sites = repair_sites(model)
    assert sites == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 50, (4, 12), generator=g)}]
    repair_model(model, aligned, [0.5, 0.5], data)

    def site_outputs(sd):
        m = GPT2LMHeadModel(cfg).eval()
        m.load_state_dict(sd)
        seen = {}
        handles = [dict(m.named_modules())[s].register_forward_hook(
            lambda mod, i, o, s=s: seen.__setitem__(s, o.detach().double().reshape(-1, o.shape[-1]))) for s in sites]
        with torch.no_grad():
            m(input_ids=data[0]["input_ids"])
        for h in handles:
            h.remove()
        return seen

    got, outs = site_outputs(model.state_dict()), [site_outputs(sd) for sd in aligned]
    for s in sites:
        torch.testing.assert_close(got[s].mean(0), 0.5 * (outs[0][s].mean(0) + outs[1][s].mean(0)), rtol=0, atol=1e-5)
        torch.testing.assert_close(got[s].std(0, unbiased=False),
                                   0.5 * (outs[0][s].std(0, unbiased=False) + outs[1][s].std(0, unbiased=False)),
                                   rtol=0, atol=1e-5)
