"""Refuse models with NaN/Inf weights, naming the model and the first bad tensor."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .errors import UserError

__all__ = ["NonFiniteError", "check_finite", "check_finite_checkpoint"]


class NonFiniteError(UserError):
    """A model holds NaN or infinite weights."""


def _first_bad(items) -> tuple[str, int, int] | None:
    for name, t in items:
        if torch.is_tensor(t) and t.is_floating_point():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                return name, int(bad.sum()), t.numel()
    return None


def check_finite(state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`NonFiniteError` if any floating tensor of ``state_dict`` holds NaN or Inf."""
    bad = _first_bad(state_dict.items())
    if bad is not None:
        name, n, total = bad
        raise NonFiniteError(
            f"{what} has non-finite weights ({n} of {total} values of {name} are NaN or Inf); "
            "retrain or replace that model"
        )


def check_finite_checkpoint(path: str, what: str | None = None) -> None:
    """Check every ``*.safetensors`` file of checkpoint folder ``path`` one tensor at a time (little memory).

    A file that cannot be read (truncated, not safetensors) is reported the same way, naming the file.
    """
    from safetensors import safe_open

    what = what or path
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors")) if os.path.isdir(path) else []
    for f in files:
        full = os.path.join(path, f)
        try:
            with safe_open(full, framework="pt") as st:
                for key in st.keys():
                    bad = _first_bad([(key, st.get_tensor(key))])
                    if bad is not None:
                        raise NonFiniteError(
                            f"{what} has non-finite weights ({bad[1]} of {bad[2]} values of {key} in {full} are "
                            "NaN or Inf); retrain or replace that model"
                        )
        except NonFiniteError:
            raise
        except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{what}: {full} is truncated or not a safetensors file ({first}); "
                             "re-download or re-save it") from None
