"""Star-domain BMA wrapper models: average the predictive distributions of S points of a star domain.

Self-contained: imports only torch and transformers (plus the configuration and, in an exported folder, the
built-in member models saved beside it), because this file is saved with every exported BMA and loaded with
``trust_remote_code=True`` where star-merge is absent.

Storage (one model.safetensors, every tensor once)::

    star.<member tensor name>              the star θ*
    anchors.<i>.<member tensor name>       anchor i aligned to the star, π_i(θ_i)
    bn_stats.<s>.<BatchNorm buffer name>   BatchNorm statistics recomputed at sample s (BatchNorm members only)

Sample s = (n_s, t_s) from ``config.samples`` has weights ``(1 - t_s)·θ* + t_s·π_{n_s}(θ_{n_s})``. In forward one
member module is run with each sample's weights in turn (``torch.func.functional_call``), so memory holds the
stored tensors plus one interpolated model, never S models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_star_bma import StarBMAConfig

#: model_type -> (config class, model class) of the member models saved beside this file: filled by
#: ``builtin_members.py``, the entry module (``auto_map``) of an exported BMA of star-merge's built-in star-mlp /
#: star-cnn1d members, which ships their code too. Empty otherwise: inside star_merge the built-in models are
#: registered with the Auto classes, and a BMA of transformers members ships no member code at all.
SHIPPED_MEMBERS: dict = {}

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def resolve_member_classes(member_config: dict) -> tuple[type, type]:
    """(config class, model class) of the member architecture described by ``member_config``.

    This file keeps its own resolver instead of ``star_merge.modeling.model_class_for`` on purpose: it is
    copied into every exported BMA folder and must load with ``trust_remote_code=True`` where star_merge is
    not installed. Keep the two in agreement (architectures[0] first, then the classification heads).
    """
    from transformers import CONFIG_MAPPING

    model_type = member_config.get("model_type")
    arch = (member_config.get("architectures") or [None])[0]
    if model_type in SHIPPED_MEMBERS:
        return SHIPPED_MEMBERS[model_type]
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"the BMA's member model_type {model_type!r} is unknown here; `import star_merge.bma` (or the package "
            "that registers that architecture) first, or load the folder with trust_remote_code=True"
        )
    config_cls = CONFIG_MAPPING[model_type]
    if arch is not None and hasattr(transformers, arch):
        return config_cls, getattr(transformers, arch)
    for auto in (
        transformers.AutoModelForSequenceClassification,
        transformers.AutoModelForImageClassification,
        transformers.AutoModelForAudioClassification,
    ):
        model_cls = auto._model_mapping.get(config_cls, None)
        if model_cls is not None and (arch is None or model_cls.__name__ == arch):
            return config_cls, model_cls
    raise ValueError(
        f"cannot find the member class {arch!r} for model_type {model_type!r}; register it first"
    )


def head_of(architecture: str) -> str:
    """The task a member head solves: ``image-classification``, ``sequence-classification``, ``causal-lm`` or
    ``masked-lm``."""
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if architecture.endswith(("ForMaskedLM", "ForPreTraining")):
        return "masked-lm"
    if architecture.endswith("ForImageClassification"):
        return "image-classification"
    if architecture.endswith(("ForSequenceClassification", "ForClassification")):
        return "sequence-classification"
    raise ValueError(
        f"star-domain BMA averages class or token probabilities; member head {architecture!r} is not supported "
        "(use a *ForSequenceClassification, *ForImageClassification, *ForCausalLM / *LMHeadModel, *ForMaskedLM or "
        "star-merge built-in model)"
    )


def member_tensor_layout(member: nn.Module) -> dict[str, tuple[torch.Size, torch.dtype, bool]]:
    """name -> (shape, dtype, is parameter) of every tensor in ``member.state_dict()``."""
    params = {name for name, _ in member.named_parameters()}
    return {name: (t.shape, t.dtype, name in params) for name, t in member.state_dict().items()}


def batchnorm_buffer_names(member: nn.Module) -> list[str]:
    """State-dict names of the running statistics of every BatchNorm in ``member``."""
    names = []
    for mod_name, mod in member.named_modules():
        if isinstance(mod, _BN_TYPES) and mod.track_running_stats:
            names += [f"{mod_name}.{b}" if mod_name else b for b in _BN_BUFFERS]
    return names


class TensorStore(nn.Module):
    """Tensors kept under their member names: a tree of empty modules, so keys read ``<prefix>.layers.0.weight``."""

    def __init__(self, layout: dict[str, tuple[torch.Size, torch.dtype, bool]]):
        super().__init__()
        self.tensor_names = list(layout)
        for name, (shape, dtype, is_param) in layout.items():
            *path, leaf = name.split(".")
            owner = self
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, nn.Module())
                owner = owner._modules[part]
            tensor = torch.zeros(shape, dtype=dtype)
            if is_param:
                owner.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
            else:
                owner.register_buffer(leaf, tensor)

    def tensors(self) -> dict[str, torch.Tensor]:
        """name -> stored tensor, in layout order."""
        return {
            name: self.get_parameter(name) if self._is_param(name) else self.get_buffer(name)
            for name in self.tensor_names
        }

    def _is_param(self, name: str) -> bool:
        *path, leaf = name.split(".")
        owner = self.get_submodule(".".join(path)) if path else self
        return leaf in owner._parameters

    @torch.no_grad()
    def fill(self, state_dict: dict[str, torch.Tensor], what: str) -> None:
        """Copy ``state_dict`` in; its names and shapes must match the layout exactly."""
        own = self.tensors()
        missing, extra = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
        if missing or extra:
            detail = f"lacks {missing[0]!r}" if missing else f"has the extra tensor {extra[0]!r}"
            raise ValueError(f"{what} {detail}; every member must have the star's architecture")
        for name, dst in own.items():
            src = state_dict[name]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(
                    f"{what}: tensor {name!r} has shape {tuple(src.shape)} but the star's is {tuple(dst.shape)}; "
                    "every member must have the star's architecture"
                )
            dst.copy_(src.to(dst.dtype))


@dataclass
class StarBMAOutput(ModelOutput):
    """``logits`` = log of the mean softmax over the S samples (so ``softmax(logits)`` is the BMA predictive);
    ``loss`` = its NLL when ``labels`` are given; ``member_logits`` [S, batch, num_labels] on request."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    member_logits: torch.FloatTensor | None = None


class StarBMAPreTrainedModel(PreTrainedModel):
    """Shared storage, sampling and forward of the BMA heads; subclasses only name the head."""

    config_class = StarBMAConfig
    base_model_prefix = "star_bma"
    head = None  # set by subclasses

    def __init__(self, config: StarBMAConfig):
        super().__init__(config)
        if not config.member_config:
            raise ValueError(
                "StarBMAConfig.member_config is empty; build the BMA with star_merge.bma.build_bma"
            )
        member_config_cls, member_cls = resolve_member_classes(config.member_config)
        arch = member_cls.__name__
        if head_of(arch) != self.head:
            raise ValueError(
                f"this BMA wraps {arch} members ({head_of(arch)}); load it with the matching class, "
                f"e.g. {HEAD_CLASS_NAMES[head_of(arch)]} / AutoModelFor{HEAD_AUTO_SUFFIX[head_of(arch)]}"
            )
        self.member_config = member_config_cls.from_dict(dict(config.member_config))
        problem = getattr(self.member_config, "problem_type", None)
        if self.head in LM_HEADS:
            pass  # token heads: a softmax over the vocabulary at every position
        elif problem in ("regression", "multi_label_classification") or self.member_config.num_labels < 2:
            raise ValueError(
                f"star-domain BMA averages softmax probabilities; members with problem_type={problem!r} and "
                f"num_labels={self.member_config.num_labels} are not single-label classifiers"
            )
        self.member_class = member_cls
        self.main_input_name = member_cls.main_input_name
        with torch.device("meta"):
            skeleton = member_cls(self.member_config)
        layout = member_tensor_layout(skeleton)
        self.bn_buffer_names = batchnorm_buffer_names(skeleton)
        self.star = TensorStore(layout)
        self.anchors = nn.ModuleList(TensorStore(layout) for _ in range(config.num_anchors))
        if self.bn_buffer_names:
            bn_layout = {name: (layout[name][0], layout[name][1], False) for name in self.bn_buffer_names}
            self.bn_stats = nn.ModuleList(TensorStore(bn_layout) for _ in range(config.num_samples))
        self._member = None  # built lazily, outside any meta-device context, and never saved
        self.post_init()

    def _init_weights(self, module):
        pass  # every stored tensor comes from a checkpoint; incomplete checkpoints are rejected in from_pretrained

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` that refuses a BMA folder whose weights are incomplete."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        model.requires_grad_(False)  # stored tensors are data, not trainable weights
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            keys = sorted(info.get(kind) or [], key=str)
            if keys:
                raise ValueError(
                    f"{pretrained_model_name_or_path} is not a complete star-merge BMA: {kind.replace('_', ' ')} "
                    f"{keys[0]!r} ({len(keys)} in all) for num_anchors={model.config.num_anchors}, "
                    f"num_samples={model.config.num_samples}; re-export it with `star-merge export-bma RUN_DIR --overwrite`"
                )
        return (model, info) if want_info else model

    def _apply(self, fn, *args, **kwargs):
        self._member = None  # rebuilt on the new device / dtype at the next forward
        return super()._apply(fn, *args, **kwargs)

    def member_module(self) -> nn.Module:
        """The one member module the samples run through; its own weights share memory with the star."""
        if self._member is None:
            member = self.member_class(self.member_config)
            member.load_state_dict({k: v.detach() for k, v in self.star.tensors().items()}, assign=True)
            member.requires_grad_(False).eval()
            self.__dict__["_member"] = member  # a plain attribute: not a submodule, never in the state dict
        return self._member

    def sample_state_dict(self, s: int) -> dict[str, torch.Tensor]:
        """The member state dict of sample ``s``: ``(1-t)·star + t·anchor_n``, BatchNorm statistics of sample s."""
        n, t = self.config.samples[s]
        anchor = self.anchors[n].tensors()
        out = {}
        for name, a in self.star.tensors().items():
            out[name] = torch.lerp(a, anchor[name], float(t)) if a.is_floating_point() else a
        if self.bn_buffer_names:
            out.update(self.bn_stats[s].tensors())
        return out

    def forward(
        self,
        labels: torch.Tensor | None = None,
        return_member_logits: bool | None = None,
        return_dict=None,
        **inputs,
    ):
        """Run every sample on ``inputs`` (the member's own inputs) and return ``log(mean_s softmax(logits_s))``.

        Members always run in eval mode (BatchNorm uses the per-sample statistics, dropout is off).
        """
        if return_member_logits is None:
            return_member_logits = self.config.return_member_logits
        for key in ("output_attentions", "output_hidden_states", "use_cache", "past_key_values", "cache_position",
                    "logits_to_keep"):
            inputs.pop(key, None)
        member = self.member_module()
        log_total, member_logits = None, []
        for s in range(self.config.num_samples):
            out = torch.func.functional_call(
                member, self.sample_state_dict(s), args=(), kwargs={**inputs, "return_dict": True}
            )
            logits = out.logits if getattr(out, "logits", None) is not None else out.prediction_logits
            log_p = torch.log_softmax(logits.float(), dim=-1)
            log_total = log_p if log_total is None else torch.logaddexp(log_total, log_p)
            if return_member_logits:
                member_logits.append(logits)
        logits = log_total - math.log(self.config.num_samples)
        loss = None
        if labels is not None:
            labels = labels.long().to(logits.device)
            if self.head == "causal-lm":  # next-token: position i predicts token i + 1
                logits_, labels = logits[:, :-1], labels[:, 1:]
            else:
                logits_ = logits
            loss = nn.functional.nll_loss(logits_.reshape(-1, logits_.shape[-1]), labels.reshape(-1), ignore_index=-100)
        stacked = torch.stack(member_logits) if return_member_logits else None
        if return_dict is False:
            return tuple(x for x in (loss, logits, stacked) if x is not None)
        return StarBMAOutput(loss=loss, logits=logits, member_logits=stacked)


class StarBMAForSequenceClassification(StarBMAPreTrainedModel):
    """BMA of sequence classifiers: ``*ForSequenceClassification`` members and star-merge's star-mlp / star-cnn1d."""

    head = "sequence-classification"


class StarBMAForImageClassification(StarBMAPreTrainedModel):
    """BMA of image classifiers (``ViTForImageClassification``, ``ResNetForImageClassification``, ...)."""

    head = "image-classification"
    main_input_name = "pixel_values"


class StarBMAForCausalLM(StarBMAPreTrainedModel, GenerationMixin):
    """BMA of causal LMs (``GPTNeoXForCausalLM``, ``GPT2LMHeadModel``, ...): next-token distribution = mean of the
    samples' softmax. ``generate()`` works (greedy and sampling) without a KV cache: every step reruns the prefix."""

    head = "causal-lm"

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _supports_default_dynamic_cache(self) -> bool:  # no cache: the members run on the whole prefix
        return False


class StarBMAForMaskedLM(StarBMAPreTrainedModel):
    """BMA of masked LMs (``BertForMaskedLM``, ``BertForPreTraining``): per-position mean of the samples' softmax."""

    head = "masked-lm"


LM_HEADS = ("causal-lm", "masked-lm")
HEAD_CLASSES = {
    "sequence-classification": StarBMAForSequenceClassification,
    "image-classification": StarBMAForImageClassification,
    "causal-lm": StarBMAForCausalLM,
    "masked-lm": StarBMAForMaskedLM,
}
HEAD_CLASS_NAMES = {k: v.__name__ for k, v in HEAD_CLASSES.items()}
HEAD_AUTO_SUFFIX = {
    "sequence-classification": "SequenceClassification",
    "image-classification": "ImageClassification",
    "causal-lm": "CausalLM",
    "masked-lm": "MaskedLM",
}
