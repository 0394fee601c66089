"""Shared building blocks for family adapters: an axes collector that reads like the network diagram.

An adapter walks the model's layers and calls ``linear``/``norm``/``conv``/… on an :class:`AxesCollector`;
each call names the permutation of every axis of the tensors it adds. :meth:`AxesCollector.build` then
checks that the adapter covered every tensor of the concrete model, so a tensor the adapter does not know
(a head or an architecture variant it was never written for) is an error, never silently left unpermuted.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..groups import ORTHOGONAL, ORTHOGONAL_MEAN_FREE, PERMUTATION, check_symmetry
from ..spec import AxisEntry, AxisPerm, PermutationSpec, SpecError

__all__ = [
    "RESIDUAL_READERS", "AxesCollector", "find_prefix", "heads_axis", "present_readers", "stream_collector",
    "stream_kind",
]

#: Task heads of decoder-style models that read the final hidden state (language-model, sequence, token and span
#: heads alike): ``lm_head``, ``score``, ``classifier``, ``qa_outputs``.
RESIDUAL_READERS = ("lm_head", "score", "classifier", "qa_outputs")


def find_prefix(shapes: Mapping[str, tuple[int, ...]], anchor: str, model_type: str) -> str:
    """The name prefix of the base model (``"model."``, ``"bert."``, ``""`` …), found from an anchor tensor.

    ``anchor`` is a tensor name every model of the family has, relative to the base model
    (e.g. ``"embed_tokens.weight"``). Task-head models nest the base model under one attribute.
    """
    candidates = sorted(k[: -len(anchor)] for k in shapes if k == anchor or k.endswith("." + anchor))
    if len(candidates) != 1:
        found = f"found it under {candidates}" if candidates else "found no such tensor"
        raise SpecError(
            f"the {model_type!r} adapter looks for the tensor '*{anchor}' to locate the base model but {found}; "
            "this checkpoint does not have the layout the adapter was written for"
        )
    return candidates[0]


def stream_kind(symmetry: str, norm: str) -> str:
    """The group of a residual stream under ``symmetry``: permutations, or (folded form) every orthogonal map for
    an RMSNorm stream (``norm="rms"``), those with Q·1 = 1 for a LayerNorm stream (``norm="layer"``)."""
    if check_symmetry(symmetry) == "permutation":
        return PERMUTATION
    return ORTHOGONAL if norm == "rms" else ORTHOGONAL_MEAN_FREE


def present_readers(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, int]]:
    """The task heads present in ``shapes`` that read the residual stream, as ``(weight name, input axis)``."""
    return [(f"{h}.weight", 1) for h in RESIDUAL_READERS if f"{h}.weight" in shapes]


def stream_collector(
    model_type: str, shapes, anchor: str, *, symmetry: str, norm: str, permute_residual: bool
) -> tuple[AxesCollector, str | None]:
    """An :class:`AxesCollector` rooted at the base model found from ``anchor``, and its residual stream's name
    (``None`` when the stream is not permuted), declared with the group ``stream_kind(symmetry, norm)``."""
    axes = AxesCollector(model_type, shapes, find_prefix(shapes, anchor, model_type))
    res = "residual" if permute_residual else None
    axes.group(res, stream_kind(symmetry, norm))
    return axes, res


def heads_axis(name: str, head_dim: int, enabled: bool) -> AxisPerm | None:
    """An axis that holds ``head_dim``-wide attention heads permuted as whole heads (``None`` if disabled)."""
    return AxisPerm(name, block=head_dim) if enabled else None


class AxesCollector:
    """Collects ``tensor name -> axes`` for one model; tensor names are relative to ``prefix``."""

    def __init__(self, model_type: str, shapes: Mapping[str, tuple[int, ...]], prefix: str = ""):
        self.model_type = model_type
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.prefix = prefix
        self.axes: dict[str, tuple[AxisEntry, ...]] = {}
        self.kinds: dict[str, str] = {}

    # ------------------------------------------------------------------ primitives
    def has(self, name: str, *, absolute: bool = False) -> bool:
        return (name if absolute else self.prefix + name) in self.shapes

    def shape(self, name: str, *, absolute: bool = False) -> tuple[int, ...]:
        key = name if absolute else self.prefix + name
        if key not in self.shapes:
            raise SpecError(
                f"the {self.model_type!r} adapter expects a tensor {key!r}, which the model does not have; "
                "is the checkpoint of a different architecture variant?"
            )
        return self.shapes[key]

    def add(self, name: str, *axes: AxisEntry, absolute: bool = False) -> None:
        """Add one tensor (it must exist) with one permutation entry per axis."""
        key = name if absolute else self.prefix + name
        shape = self.shape(key, absolute=True)
        if len(axes) != len(shape):
            raise SpecError(
                f"the {self.model_type!r} adapter gives {len(axes)} axes for {key!r}, which has shape {shape}"
            )
        if key in self.axes:
            raise SpecError(f"the {self.model_type!r} adapter names tensor {key!r} twice")
        self.axes[key] = tuple(axes)

    def add_if_present(self, name: str, *axes: AxisEntry, absolute: bool = False) -> bool:
        if not self.has(name, absolute=absolute):
            return False
        self.add(name, *axes, absolute=absolute)
        return True

    def group(self, name: str | None, kind: str) -> None:
        """Declare the group kind of ``name`` (``None``: nothing; permutation is the default)."""
        if name is not None and kind != PERMUTATION:
            self.kinds[name] = kind

    def _is_orthogonal(self, entry: AxisEntry) -> bool:
        name = entry.perm if isinstance(entry, AxisPerm) else entry
        return name in self.kinds

    # ------------------------------------------------------------------ layers
    def residual_readers(self, res: AxisEntry, heads=RESIDUAL_READERS) -> None:
        """The task heads present (of ``heads``, named from the model's root) as linear readers of stream ``res``."""
        for head in heads:
            if self.has(f"{head}.weight", absolute=True):
                self.linear(head, None, res, absolute=True)

    def linear(self, name: str, out: AxisEntry, in_: AxisEntry, *, absolute: bool = False) -> None:
        """``nn.Linear``: weight ``[out, in]``, optional bias ``[out]``."""
        self.add(f"{name}.weight", out, in_, absolute=absolute)
        self.add_if_present(f"{name}.bias", out, absolute=absolute)

    def attention(
        self, projections: tuple[str, ...], output: str, heads: AxisEntry, stream: AxisEntry
    ) -> None:
        """Self-attention with separate projections: each reads ``stream`` into ``heads``; ``output`` writes back."""
        for name in projections:
            self.linear(name, heads, stream)
        self.linear(output, stream, heads)

    def mlp(self, inputs: tuple[str, ...], output: str, hidden: AxisEntry, stream: AxisEntry) -> None:
        """Feed-forward block: ``inputs`` (e.g. gate and up) read ``stream`` into ``hidden``; ``output`` writes back."""
        for name in inputs:
            self.linear(name, hidden, stream)
        self.linear(output, stream, hidden)

    def conv1d_transposed(self, name: str, in_: AxisEntry, out: AxisEntry) -> None:
        """GPT-2's ``Conv1D``: weight stored ``[in, out]``, optional bias ``[out]``."""
        self.add(f"{name}.weight", in_, out)
        self.add_if_present(f"{name}.bias", out)

    def conv(self, name: str, out: AxisEntry, in_: AxisEntry) -> None:
        """``nn.Conv2d``: weight ``[out, in, kh, kw]``, optional bias ``[out]``."""
        self.add(f"{name}.weight", out, in_, None, None)
        self.add_if_present(f"{name}.bias", out)

    def norm(self, name: str, p: AxisEntry, *, absolute: bool = False) -> None:
        """LayerNorm/RMSNorm over one axis: weight and optional bias ``[features]``. On an orthogonal stream the
        model is in folded form: the weight is 1 and no group acts on it (the bias rotates with the stream)."""
        self.add(f"{name}.weight", None if self._is_orthogonal(p) else p, absolute=absolute)
        self.add_if_present(f"{name}.bias", p, absolute=absolute)

    def batchnorm(self, name: str, p: AxisEntry) -> None:
        """BatchNorm: affine parameters and running statistics follow the channels; the counter does not."""
        for t in ("weight", "bias", "running_mean", "running_var"):
            self.add_if_present(f"{name}.{t}", p)
        self.add_if_present(f"{name}.num_batches_tracked")

    def embedding(self, name: str, p: AxisEntry) -> None:
        """``nn.Embedding``: weight ``[vocab, features]``; only the feature axis is permuted."""
        self.add(f"{name}.weight", None, p)

    # ------------------------------------------------------------------ result
    def build(self) -> PermutationSpec:
        """The spec; raises if the model has a tensor the adapter did not place."""
        unknown = [k for k in self.shapes if k not in self.axes]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise SpecError(
                f"the {self.model_type!r} adapter does not know tensor {unknown[0]!r}{more}: this head or "
                "architecture variant is not supported. Write an adapter that covers it and register it with "
                f"star_merge.register_adapter({self.model_type!r}, builder, overwrite=True) (see docs/adapters.md)"
            )
        return PermutationSpec.from_axes(self.axes, self.shapes, self.kinds)
