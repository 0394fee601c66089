"""Seeds: every random choice of star-merge takes one, and these turn seeds into generators' states."""

from __future__ import annotations

__all__ = ["beta_from_uniform", "mix_seed", "set_seed"]


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (run seed, epoch, batch, rank, ...): equal parts, equal seed."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h * 6364136223846793005 + int(p) + 1442695040888963407) % (2**63)
    return h


def beta_from_uniform(u: float, a: float) -> float:
    """A Beta(a, a) draw: the inverse CDF (scipy's ``betaincinv``) at a uniform ``u`` (the Starlight step's t)."""
    from scipy.special import betaincinv

    return float(betaincinv(a, a, u))
