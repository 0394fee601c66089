"""Per-minibatch randomness of the Starlight step: Beta(a, a) draws (seeds are mixed by :mod:`star_merge.seeding`)."""

from __future__ import annotations

__all__ = ["beta_from_uniform"]


def beta_from_uniform(u: float, a: float) -> float:
    """A Beta(a, a) draw: the inverse CDF (scipy's ``betaincinv``) at a uniform ``u``."""
    from scipy.special import betaincinv

    return float(betaincinv(a, a, u))
