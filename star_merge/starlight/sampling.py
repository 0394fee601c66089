"""Per-minibatch randomness of the Starlight step: a seed mixer and Beta(a, a) draws."""

from __future__ import annotations

__all__ = ["mix_seed", "beta_from_uniform"]


def mix_seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h * 6364136223846793005 + int(p) + 1442695040888963407) % (2**63)
    return h


def beta_from_uniform(u: float, a: float) -> float:
    """A Beta(a, a) draw: the inverse CDF (scipy's ``betaincinv``) at a uniform ``u``."""
    from scipy.special import betaincinv

    return float(betaincinv(a, a, u))
