"""Configuration of the star-domain BMA wrapper (``model_type = "star-bma"``).

Self-contained: imports only transformers and numpy (a transformers dependency), because this file is saved
beside the weights of every exported BMA and loaded with ``trust_remote_code=True`` where star-merge is absent.
"""

from __future__ import annotations

import math
import re

import numpy as np
from transformers import PreTrainedConfig

T_DISTRIBUTIONS = {"uniform": (0.0, 1.0), "beta": (2.0, 2.0), "constant": (0.5,)}


def parse_t_distribution(spec: str, parameters=None) -> tuple[str, list[float]]:
    """``"uniform"``, ``"beta(2,2)"``, ``"constant(0.5)"`` (or a name plus ``parameters``) -> (name, parameters)."""
    match = re.fullmatch(r"\s*([a-z]+)\s*(?:\(([^)]*)\))?\s*", str(spec))
    if match is None or match.group(1) not in T_DISTRIBUTIONS:
        raise ValueError(
            f"unknown t distribution {spec!r}; use 'uniform', 'uniform(low,high)', 'beta(a,b)' or 'constant(t)'"
        )
    name, inline = match.group(1), match.group(2)
    if inline is not None and parameters is not None:
        raise ValueError(f"t distribution {spec!r} has inline parameters; do not also pass t_parameters")
    if inline is not None:
        try:
            parameters = [float(p) for p in inline.split(",")]
        except ValueError:
            raise ValueError(
                f"t distribution {spec!r}: parameters must be numbers, e.g. 'beta(2,2)'"
            ) from None
    params = [float(p) for p in (parameters if parameters is not None else T_DISTRIBUTIONS[name])]
    if len(params) != len(T_DISTRIBUTIONS[name]):
        raise ValueError(
            f"t distribution {name!r} takes {len(T_DISTRIBUTIONS[name])} parameters, got {params}"
        )
    if name == "uniform" and not 0.0 <= params[0] <= params[1] <= 1.0:
        raise ValueError(f"uniform(low, high) needs 0 <= low <= high <= 1, got {params}")
    if name == "beta" and min(params) <= 0:
        raise ValueError(f"beta(a, b) needs a > 0 and b > 0, got {params}")
    if name == "constant" and not 0.0 <= params[0] <= 1.0:
        raise ValueError(f"constant(t) needs 0 <= t <= 1, got {params}")
    return name, params


def draw_samples(
    num_anchors: int, num_samples: int, t_distribution: str, t_parameters, seed: int
) -> list[list]:
    """``num_samples`` points of the star domain as ``[anchor index n, t]``, reproducible from ``seed``."""
    rng = np.random.default_rng(int(seed))
    anchors = rng.integers(0, num_anchors, size=num_samples)
    if t_distribution == "uniform":
        ts = rng.uniform(t_parameters[0], t_parameters[1], size=num_samples)
    elif t_distribution == "beta":
        ts = rng.beta(t_parameters[0], t_parameters[1], size=num_samples)
    else:
        ts = np.full(num_samples, t_parameters[0])
    return [[int(n), float(t)] for n, t in zip(anchors, ts)]


class StarBMAConfig(PreTrainedConfig):
    """Bayesian model averaging over the star domain of a Starlight run.

    The wrapper holds the star θ* and N anchors π_n(θ_n) aligned to it. Sample s is the anchor index n_s and t_s;
    its weights are ``(1 - t_s)·θ* + t_s·π_{n_s}(θ_{n_s})``. The (n, t) list is drawn from ``seed`` when not given
    and saved in ``samples`` so a saved BMA never depends on the random generator's version.

    Args:
        member_config: the member architecture's config as a dict (``PreTrainedConfig.to_dict()``).
        num_anchors: N, the number of aligned anchors stored.
        num_samples: S >= 1, the number of star-domain points averaged.
        t_distribution: ``uniform`` (low, high), ``beta`` (a, b) or ``constant`` (t); a string like ``beta(2,2)``
            may carry the parameters inline.
        t_parameters: the distribution's parameters (defaults: uniform [0, 1], beta [2, 2], constant [0.5]).
        seed: seed of the (n, t) draw.
        member_names: names of the anchors, in storage order (``anchors.<i>``).
        samples: the drawn ``[n, t]`` list; filled from ``seed`` when None.
        return_member_logits: default of the forward flag that also returns every sample's logits.
    """

    model_type = "star-bma"

    def __init__(
        self,
        member_config: dict | None = None,
        num_anchors: int = 1,
        num_samples: int = 16,
        t_distribution: str = "uniform",
        t_parameters: list | None = None,
        seed: int = 0,
        member_names: list | None = None,
        samples: list | None = None,
        return_member_logits: bool = False,
        **kwargs,
    ):
        if member_config is not None and not isinstance(member_config, dict):
            member_config = member_config.to_dict()  # a PreTrainedConfig
        self.member_config = dict(member_config or {})
        self.num_anchors = int(num_anchors)
        self.num_samples = int(num_samples)
        if self.num_samples < 1:
            raise ValueError(
                f"num_samples must be >= 1, got {num_samples}; a BMA averages at least one point"
            )
        if self.num_anchors < 1:
            raise ValueError(f"num_anchors must be >= 1, got {num_anchors}; the star domain needs anchors")
        self.t_distribution, self.t_parameters = parse_t_distribution(t_distribution, t_parameters)
        self.seed = int(seed)
        self.member_names = (
            list(member_names)
            if member_names is not None
            else [f"anchor-{i:02d}" for i in range(self.num_anchors)]
        )
        if len(self.member_names) != self.num_anchors:
            raise ValueError(
                f"member_names has {len(self.member_names)} names for num_anchors={self.num_anchors}"
            )
        if samples is None:
            samples = draw_samples(
                self.num_anchors, self.num_samples, self.t_distribution, self.t_parameters, self.seed
            )
        self.samples = [[int(n), float(t)] for n, t in samples]
        if len(self.samples) != self.num_samples:
            raise ValueError(
                f"samples lists {len(self.samples)} points but num_samples={self.num_samples}; "
                "pass samples=None to redraw them from the seed"
            )
        for n, t in self.samples:
            if not 0 <= n < self.num_anchors or not (0.0 <= t <= 1.0) or math.isnan(t):
                raise ValueError(
                    f"sample (n={n}, t={t}) is outside anchors [0, {self.num_anchors}) x t in [0, 1]"
                )
        self.return_member_logits = bool(return_member_logits)
        if "id2label" not in kwargs and "num_labels" not in kwargs and self.member_config.get("id2label"):
            kwargs["id2label"] = {int(k): v for k, v in self.member_config["id2label"].items()}
            kwargs["label2id"] = dict(
                self.member_config.get("label2id") or {v: k for k, v in kwargs["id2label"].items()}
            )
        super().__init__(**kwargs)
