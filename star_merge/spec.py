"""Permutation specs: which axes of which tensors may be reordered without changing a network's function.

A :class:`PermutationSpec` maps every tensor of a state dict (parameters and persistent buffers) to one
entry per axis: ``None`` (the axis is never permuted) or an :class:`AxisPerm` naming a permutation.
One permutation name shared by several tensors ties them together: permuting the hidden units of a
layer moves the rows of its weight, its bias, its BatchNorm statistics and the columns of the next
layer's weight, all by the same permutation.

An axis need not be permuted element by element. ``AxisPerm(name, block=B, repeat=R)`` says the axis
has size ``R * P * B`` where ``P`` is the permutation's size: it is ``R`` consecutive copies of ``P``
blocks of ``B`` contiguous elements, and the permutation moves whole blocks inside each copy. This
covers attention heads (``block=head_dim``), fused q/k/v projections (``repeat=3``), and a flattened
``channels x length`` feature map (``block=length``).

An axis may also be a concatenation: :class:`Segments` lists its parts in order, each permuted by its own
permutation (``(name, span)`` or ``AxisPerm(name, span=...)``) or fixed (an ``int``: that many elements never
move, e.g. input channels). DenseNet's layers read the concatenation of every earlier feature map, so the
input axis of a dense layer's first BatchNorm and convolution is ``Segments(("stem", 24), ("b0.l0", 12), ...)``.
The spec checks that the segments' spans sum to the axis and fit their permutations' sizes; ``perm_to_axes``
lists one (tensor, axis, entry) per permuted segment, the entry carrying the segment's ``offset`` and ``span``.

Convention: ``apply_permutation(spec, perm, sd)[k]`` indexes old positions, ``new[i] = old[perm[i]]``
along each permuted axis (as in git re-basin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Union

import torch

from . import groups
from .groups import GROUP_KINDS, PERMUTATION, SpecError, expand_index

__all__ = [
    "AxisPerm",
    "Segments",
    "axis_perms",
    "map_entry",
    "PermutationSpec",
    "SpecError",
    "random_permutation",
    "identity_permutation",
    "apply_permutation",
    "inverse_permutation",
    "compose_permutations",
    "expand_index",
    "group_kind",
]


@dataclass(frozen=True)
class AxisPerm:
    """One axis permuted by permutation ``perm``; the axis has ``repeat * size(perm) * block`` entries.

    Inside :class:`Segments`, ``span`` is the segment's length and ``offset`` (filled in by ``Segments``)
    its first element along the axis; a plain axis entry leaves both ``None``."""

    perm: str
    block: int = 1
    repeat: int = 1
    offset: int | None = None
    span: int | None = None

    def __post_init__(self):
        if self.block < 1 or self.repeat < 1:
            raise SpecError(f"AxisPerm({self.perm!r}): block and repeat must be >= 1")
        if self.span is not None and self.span < 1:
            raise SpecError(f"AxisPerm({self.perm!r}): span must be >= 1")


@dataclass(frozen=True, init=False)
class Segments:
    """A concatenated axis: ``parts`` in order, each an :class:`AxisPerm` with ``offset`` and ``span`` (a
    segment permuted by its own permutation) or an ``int`` (that many fixed elements).

    ``Segments(3, ("block0.layer0", 12), AxisPerm("block0.layer1", span=12))``: 3 fixed elements, then two
    segments of 12 permuted by their own permutations."""

    parts: tuple

    def __init__(self, *parts):
        out, offset = [], 0
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, (int, tuple, AxisPerm)):
                raise SpecError("a segment is an int (fixed elements), (name, span) or AxisPerm(name, span=...), "
                                f"got {part!r}")
            if isinstance(part, int):
                if part < 1:
                    raise SpecError(f"a fixed segment needs at least one element, got {part}")
                out.append(part)
                offset += part
                continue
            if isinstance(part, tuple):
                if len(part) != 2 or not isinstance(part[1], int):
                    raise SpecError(f"a permuted segment is (name, span), got {part!r}")
                ap = part[0] if isinstance(part[0], AxisPerm) else AxisPerm(str(part[0]))
                ap = replace(ap, span=part[1])
            else:
                ap = part
            if ap.span is None:
                raise SpecError(f"segment {ap.perm!r} needs its span (AxisPerm(name, span=...) or (name, span))")
            ap = replace(ap, offset=offset)
            out.append(ap)
            offset += ap.span
        if not out:
            raise SpecError("Segments needs at least one segment")
        object.__setattr__(self, "parts", tuple(out))

    @property
    def size(self) -> int:
        return sum(p if isinstance(p, int) else p.span for p in self.parts)

    @property
    def permuted(self) -> tuple[AxisPerm, ...]:
        return tuple(p for p in self.parts if isinstance(p, AxisPerm))


AxisEntry = Union[AxisPerm, Segments, str, None]


def _as_axis(entry: AxisEntry) -> AxisPerm | Segments | None:
    if entry is None or isinstance(entry, Segments):
        return entry
    if isinstance(entry, AxisPerm):
        if entry.offset is not None or entry.span is not None:
            raise SpecError(f"AxisPerm({entry.perm!r}) has an offset or span: segments of an axis go in Segments(...)")
        return entry
    if isinstance(entry, str):
        return AxisPerm(entry)
    raise SpecError(f"axis entry must be None, a permutation name, an AxisPerm or Segments, got {entry!r}")


def axis_perms(entry) -> tuple[str, ...]:
    """The permutation names an axis entry uses (none for ``None``, one per permuted segment of Segments)."""
    return tuple(ap.perm for ap in _entry_units(entry))


def _entry_units(entry) -> list[AxisPerm]:
    """The (segment) entries of an axis that a permutation acts on."""
    if entry is None:
        return []
    return list(entry.permuted) if isinstance(entry, Segments) else [entry]


@dataclass
class PermutationSpec:
    """Tensor name -> one :class:`AxisPerm` or ``None`` per axis, plus the size of every permutation.

    Build it with :meth:`from_axes` from the tensors' shapes (or a state dict); the constructor checks
    that every axis of a permutation has a consistent size.
    """

    axes_to_perm: dict[str, tuple[AxisPerm | None, ...]]
    shapes: dict[str, tuple[int, ...]]
    perm_sizes: dict[str, int] = field(default_factory=dict)
    #: name -> group kind (``star_merge.groups``); a name not listed is a permutation.
    group_kinds: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.axes_to_perm = {k: tuple(_as_axis(a) for a in v) for k, v in self.axes_to_perm.items()}
        self.shapes = {k: tuple(int(s) for s in v) for k, v in self.shapes.items()}
        missing = [k for k in self.axes_to_perm if k not in self.shapes]
        if missing:
            raise SpecError(f"spec names tensor {missing[0]!r} but no shape was given for it")
        sizes: dict[str, int] = dict(self.perm_sizes)
        where: dict[str, str] = {}
        for name, axes in self.axes_to_perm.items():
            shape = self.shapes[name]
            if len(axes) != len(shape):
                raise SpecError(
                    f"tensor {name!r} has {len(shape)} axes {shape} but the spec gives {len(axes)} entries; "
                    "give one permutation name or None per axis"
                )
            for axis, entry in enumerate(axes):
                if isinstance(entry, Segments) and entry.size != shape[axis]:
                    spans = " + ".join(str(p if isinstance(p, int) else p.span) for p in entry.parts)
                    raise SpecError(
                        f"tensor {name!r} axis {axis} has size {shape[axis]} but its segments sum to "
                        f"{entry.size} ({spans}); give segments that cover the axis exactly"
                    )
                for ap in _entry_units(entry):
                    self._check_unit(name, axis, shape[axis], ap, sizes, where)
        self.perm_sizes = sizes
        for p, kind in self.group_kinds.items():
            if kind not in GROUP_KINDS or p not in sizes:
                raise SpecError(f"group {p!r}: kind {kind!r} (known: {', '.join(GROUP_KINDS)}) of a name the spec does not use")
        self.group_kinds = {p: k for p, k in self.group_kinds.items() if k != PERMUTATION}

    @staticmethod
    def _check_unit(name, axis, length, ap, sizes, where) -> None:
        """The size of ``ap``'s permutation on (tensor, axis), checked against what earlier axes gave."""
        length = length if ap.span is None else ap.span
        what = "" if ap.offset is None else f" segment at {ap.offset}"
        n, r = divmod(length, ap.block * ap.repeat)
        if r or n == 0:
            raise SpecError(
                f"tensor {name!r} axis {axis}{what} has size {length}, not a multiple of "
                f"block*repeat={ap.block * ap.repeat} for permutation {ap.perm!r}"
            )
        if ap.perm in sizes and sizes[ap.perm] != n:
            raise SpecError(
                f"permutation {ap.perm!r} has size {sizes[ap.perm]} ({where.get(ap.perm, 'given')}) but "
                f"size {n} on tensor {name!r} axis {axis}; tensors sharing a permutation must agree"
            )
        sizes[ap.perm] = n
        where.setdefault(ap.perm, f"from {name!r} axis {axis}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_axes(
        cls,
        axes_to_perm: Mapping[str, tuple[AxisEntry, ...]],
        shapes_or_state_dict: Mapping[str, torch.Tensor | tuple[int, ...]],
        group_kinds: Mapping[str, str] | None = None,
    ) -> "PermutationSpec":
        shapes = {
            k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)
            for k, v in shapes_or_state_dict.items()
        }
        unknown = [k for k in axes_to_perm if k not in shapes]
        if unknown:
            raise SpecError(f"spec names tensor {unknown[0]!r}, which the model does not have")
        return cls(dict(axes_to_perm), {k: shapes[k] for k in axes_to_perm}, {}, dict(group_kinds or {}))

    # ------------------------------------------------------------------ views
    @property
    def perm_to_axes(self) -> dict[str, list[tuple[str, int, AxisPerm]]]:
        """Permutation name -> every (tensor name, axis, AxisPerm) it acts on."""
        out: dict[str, list[tuple[str, int, AxisPerm]]] = {p: [] for p in self.perm_sizes}
        for name, axes in self.axes_to_perm.items():
            for axis, entry in enumerate(axes):
                for ap in _entry_units(entry):
                    out[ap.perm].append((name, axis, ap))
        return out

    @property
    def permuted_tensors(self) -> list[str]:
        return [k for k, axes in self.axes_to_perm.items() if any(a is not None for a in axes)]

    def num_permuted_elements(self) -> int:
        return sum(math.prod(self.shapes[k]) for k in self.permuted_tensors)

    def subset(self, names) -> "PermutationSpec":
        """The spec restricted to ``names`` (e.g. a checkpoint that stores a tied weight once)."""
        names = set(names)
        axes = {k: v for k, v in self.axes_to_perm.items() if k in names}
        used = {p for v in axes.values() for a in v for p in axis_perms(a)}
        return PermutationSpec(axes, {k: v for k, v in self.shapes.items() if k in names}, {},
                               {p: k for p, k in self.group_kinds.items() if p in used})

    def with_kinds(self, group_kinds: Mapping[str, str]) -> "PermutationSpec":
        """The same axes with these group kinds (e.g. a negative control: a kind the architecture does not allow)."""
        return PermutationSpec(dict(self.axes_to_perm), dict(self.shapes), {}, dict(group_kinds))

    def __repr__(self) -> str:
        return (
            f"PermutationSpec({len(self.axes_to_perm)} tensors, {len(self.perm_sizes)} permutations: "
            + ", ".join(f"{p}[{n}]" for p, n in list(self.perm_sizes.items())[:8])
            + (", ..." if len(self.perm_sizes) > 8 else "")
            + ")"
        )

    # ------------------------------------------------------------------ validation
    def validate(self, state_dict: Mapping[str, torch.Tensor], *, check_finite: bool = False) -> None:
        """Raise :class:`SpecError` unless ``state_dict`` has exactly this spec's tensors with its shapes."""
        for k in state_dict:
            if k not in self.axes_to_perm:
                raise SpecError(
                    f"the permutation spec does not cover tensor {k!r}; add it to the adapter "
                    "(one permutation name or None per axis)"
                )
        for k, shape in self.shapes.items():
            if k not in state_dict:
                raise SpecError(f"state dict has no tensor {k!r}, which the spec names; is it the same architecture?")
            got = tuple(state_dict[k].shape)
            if got != shape:
                raise SpecError(f"tensor {k!r} has shape {got}, the spec expects {shape}")
            if check_finite and state_dict[k].is_floating_point() and not torch.isfinite(state_dict[k]).all():
                raise SpecError(f"tensor {k!r} contains NaN or inf values")

    def check_permutation(self, perm: Mapping[str, torch.Tensor]) -> None:
        """Raise unless ``perm`` holds one element of its group for every name of the spec."""
        for p, n in self.perm_sizes.items():
            if p not in perm:
                raise SpecError(f"permutation {p!r} is missing")
            groups.check_map(p, group_kind(self, p), n, perm[p])
        extra = set(perm) - set(self.perm_sizes)
        if extra:
            raise SpecError(f"unknown permutation name(s): {sorted(extra)}")


# ---------------------------------------------------------------------- operations
def group_kind(spec: PermutationSpec, name: str) -> str:
    """The kind of group ``name`` of ``spec`` ranges over: ``permutation`` unless the spec says otherwise."""
    return getattr(spec, "group_kinds", {}).get(name, PERMUTATION)


def identity_permutation(spec: PermutationSpec) -> dict[str, torch.Tensor]:
    """The identity of every group of ``spec`` (``arange`` for a permutation, the identity matrix otherwise)."""
    return {p: groups.identity_map(group_kind(spec, p), n) for p, n in spec.perm_sizes.items()}


def random_permutation(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A uniformly random element of every group of ``spec`` (a permutation; for an orthogonal group a Haar
    random orthogonal matrix, with Q·1 = 1 where the kind says so), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    return {p: groups.random_map(group_kind(spec, p), n, g) for p, n in sorted(spec.perm_sizes.items())}


def inverse_permutation(perm: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of every group element (``argsort`` of a permutation, the transpose of an orthogonal map)."""
    return {p: groups.invert_map(v) for p, v in perm.items()}


def compose_permutations(
    outer: Mapping[str, torch.Tensor], inner: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The permutation equal to applying ``inner`` first, then ``outer``.

    ``apply_permutation(spec, compose_permutations(p, q), sd) == apply(spec, p, apply(spec, q, sd))``.
    """
    if set(outer) != set(inner):
        raise SpecError("cannot compose permutations with different names")
    return {p: groups.compose_map(outer[p], inner[p]) for p in outer}


def map_entry(w: torch.Tensor, axis: int, entry: AxisPerm | Segments, maps: Mapping[str, torch.Tensor],
              batched: bool = False) -> torch.Tensor:
    """``w`` with ``axis`` taken through ``entry``'s group elements (``groups.map_axis``): one map for an
    :class:`AxisPerm`; for :class:`Segments` each segment through its own, fixed segments left in place.
    Batched: as ``map_axis`` (``axis`` counts the leading batch dimension, member b takes ``maps[p][b]``)."""
    if isinstance(entry, AxisPerm):
        return groups.map_axis(w, axis, maps[entry.perm], entry, batched=batched)
    pieces, start = [], 0
    for part in entry.parts:
        span = part if isinstance(part, int) else part.span
        piece = w.narrow(axis, start, span)
        pieces.append(piece if isinstance(part, int) else groups.map_axis(piece, axis, maps[part.perm], part,
                                                                           batched=batched))
        start += span
    return torch.cat(pieces, dim=axis)


def permute_tensor(
    w: torch.Tensor,
    axes: tuple[AxisPerm | Segments | None, ...],
    perm: Mapping[str, torch.Tensor],
    except_axis: int | None = None,
) -> torch.Tensor:
    for axis, entry in enumerate(axes):
        if entry is None or axis == except_axis:
            continue
        w = map_entry(w, axis, entry, perm)
    return w


def apply_permutation(
    spec: PermutationSpec,
    perm: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """A new state dict with every tensor permuted per ``spec``; ``state_dict`` is left untouched.

    Tensors that share storage (tied weights) are permuted once and stay shared in the output.
    Tensors the spec does not name are an error (use ``spec.subset`` for partial checkpoints).
    """
    out: dict[str, torch.Tensor] = {}
    done: dict[tuple, torch.Tensor] = {}
    for k, w in state_dict.items():
        if k not in spec.axes_to_perm:
            raise SpecError(f"the permutation spec does not cover tensor {k!r}")
        axes = spec.axes_to_perm[k]
        if all(a is None for a in axes):
            out[k] = w
            continue
        key = (w.untyped_storage().data_ptr(), w.storage_offset(), tuple(w.shape), tuple(w.stride()), w.device)
        if w.device.type == "meta" or key not in done:
            done[key] = permute_tensor(w, axes, perm)
        out[k] = done[key]
    return out
