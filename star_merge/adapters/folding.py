"""The folded form of a transformer: every norm's weight multiplied into the linear layers that read its output.

A norm computes ``w ⊙ n(x) (+ b)`` (RMSNorm: ``n(x) = x / rms(x)``; LayerNorm: ``(x - mean) / std``). When only
linear layers read it, ``W (w ⊙ n(x)) = (W diag(w)) n(x)``: folding ``w`` into the readers' input columns and
setting it to 1 leaves the function unchanged, and a weightless norm commutes with orthogonal maps of the stream
(RMSNorm: every Q, ‖Qx‖ = ‖x‖; LayerNorm: those with Q·1 = 1). A norm's bias stays a stream-side vector (it
rotates with Q) or, where every reader has a bias, is added to theirs (:func:`fold_state_dict`). The folded model is an ordinary checkpoint of the same class (norm weights 1).

The final norm folds into the LM head, which is tied to the input embeddings in many models: folding unties them
(``tie_word_embeddings=False``, the head a separate tensor). Post-LN streams (BERT / RoBERTa: the residual stream
is a norm's output, carried on through the residual connection) cannot be folded; there only norms read by linear
layers alone are (the masked-LM transform's LayerNorm, read by the decoder).

Each adapter registers the plan of its family, ``register_folding(model_type, plan)``: ``plan(config, shapes)``
returns ``[(norm weight tensor, [(reader tensor, input axis), ...]), ...]``.
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch

from ..errors import UserError
from .registry import _load_builtin_adapters

__all__ = ["FoldingError", "register_folding", "folding_plan", "fold_state_dict", "fold_model", "is_folded",
           "can_fold", "pre_norm_plan"]

FoldPlan = list[tuple[str, list[tuple[str, int]]]]
_PLANS: dict[str, Callable[..., FoldPlan]] = {}


class FoldingError(UserError):
    """A model cannot be brought to the folded form (no plan for its family)."""


def register_folding(model_type: str, plan: Callable[..., FoldPlan]) -> None:
    _PLANS[model_type] = plan


def pre_norm_plan(prefix: str, blocks: str, n_layers: int, norms: Mapping[str, list[tuple[str, int]]], final: str,
                  heads) -> FoldPlan:
    """The plan of a pre-norm transformer: in every block ``{prefix}{blocks}.{i}``, norm ``k`` of ``norms`` is read by
    the (tensor, input axis) pairs ``norms[k]`` (names relative to the block, without ``.weight``); the final norm
    ``{prefix}{final}`` by ``heads`` ((tensor, axis) from the model's root; absent heads are left out by the
    caller)."""
    plan: FoldPlan = []
    for i in range(n_layers):
        layer = f"{prefix}{blocks}.{i}"
        plan += [(f"{layer}.{norm}.weight", [(f"{layer}.{r}.weight", ax) for r, ax in readers])
                 for norm, readers in norms.items()]
    plan.append((f"{prefix}{final}.weight", list(heads)))
    return plan


def can_fold(config) -> bool:
    _load_builtin_adapters()
    return getattr(config, "model_type", None) in _PLANS


def folding_plan(config, shapes: Mapping[str, tuple[int, ...]]) -> FoldPlan:
    _load_builtin_adapters()
    plan = _PLANS.get(getattr(config, "model_type", None))
    if plan is None:
        raise FoldingError(f"no folded form for model_type {config.model_type!r}; use --symmetry permutation")
    return plan(config, shapes)


def is_folded(config, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether every foldable norm of the model already has weight 1."""
    plan = folding_plan(config, {k: tuple(v.shape) for k, v in state_dict.items()})
    return all(bool((state_dict[norm] == 1).all()) for norm, readers in plan if readers)


def _shares_storage(sd, name) -> bool:
    w = sd[name]
    return any(k != name and v.data_ptr() == w.data_ptr() and v.shape == w.shape for k, v in sd.items())


def fold_state_dict(config, state_dict: Mapping[str, torch.Tensor]):
    """(folded state dict, config): norm weights 1, readers' input columns scaled (computed in float64, stored in
    each tensor's dtype); the config is a copy, with ``tie_word_embeddings=False`` when a tied head was folded.

    A norm's bias b: ``W (w ⊙ n + b) = (W diag(w)) n + W b``. Where every reader has a bias, ``W b`` is added to
    it and the norm's bias becomes 0; otherwise the bias becomes ``b / w`` (so that ``W diag(w) (b / w) = W b``)."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    out = dict(state_dict)
    untie = False
    for norm, readers in folding_plan(config, shapes):
        if not readers:  # a base model's final norm: its output is the model's output, left as it is
            continue
        w = state_dict[norm].detach().to(torch.float64)
        bias_name = norm[: -len("weight")] + "bias"
        b = state_dict[bias_name].detach().to(torch.float64) if bias_name in state_dict else None
        into_readers = b is not None and all(r[: -len("weight")] + "bias" in state_dict for r, _ in readers)
        for name, axis in readers:
            t = state_dict[name]
            untie = untie or _shares_storage(state_dict, name)
            view = [1] * t.ndim
            view[axis] = -1
            out[name] = (t.detach().to(torch.float64) * w.view(view)).to(t.dtype).clone()
            if into_readers:
                rb = name[: -len("weight")] + "bias"
                shift = torch.tensordot(t.detach().to(torch.float64), b, dims=([axis], [0]))
                out[rb] = (state_dict[rb].detach().to(torch.float64) + shift).to(state_dict[rb].dtype)
        if b is not None:
            if not into_readers and bool(((w.abs() < 1e-12) & (b != 0)).any()):
                raise FoldingError(f"{norm} has a zero weight next to a non-zero bias; it cannot be folded")
            kept = torch.zeros_like(b) if into_readers else torch.where(w.abs() < 1e-12, torch.zeros_like(b), b / w)
            out[bias_name] = kept.to(state_dict[bias_name].dtype)
        out[norm] = torch.ones_like(state_dict[norm])
    config = copy.deepcopy(config)
    if untie:
        config.tie_word_embeddings = False
    return out, config


def fold_model(model: torch.nn.Module) -> torch.nn.Module:
    """A new model of the same class, in folded form, on the same device and dtype, in the same train/eval mode."""
    sd, config = fold_state_dict(model.config, model.state_dict())
    param = next(model.parameters())
    with torch.device("meta"):
        folded = type(model)(config)
    folded = folded.to_empty(device=param.device)
    missing, unexpected = folded.load_state_dict(sd, strict=False)
    buffers = {k for k, _ in folded.named_buffers()}
    if unexpected or [k for k in missing if k not in buffers]:
        raise FoldingError(f"folded weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}")
    for name, buf in model.named_buffers():  # non-persistent buffers (rotary tables, position ids)
        if name in buffers and name not in sd:
            folded.get_buffer(name).copy_(buf)
    folded.train(model.training)
    return folded
