"""Assignment backends side by side on batches of the problems a population re-alignment hands them.

    python benchmarks/solvers.py                    # CPU: scipy (host threads), lapjv; free-row shares
    python benchmarks/solvers.py --device cuda      # GPU: cuda (torch-linear-assignment) vs scipy on host threads

Problems: ``--batch`` cost matrices of each size ``--sizes`` built as weight matching builds them,
C = A·Bᵀ with A's rows random unit features and B = A + ``--noise``·randn (``structured``: a near-aligned
re-alignment, the identity is close to optimal; ``--noise`` in units of the level at which a row's best
other column rivals its own: the default leaves about a fifth of the rows free after the column reduction,
as measured on ResNet-18 re-alignments), or C = randn (``random``: an unrelated pair). Every
backend is timed on the same batches, interleaved (``--rounds`` rounds, median); each result's objective is
checked against scipy's. "steps" counts the shortest augmenting path search steps (one pass over a row's
columns each) of a from-scratch solve, torch-linear-assignment's algorithm, and "warm" those of the same
searches started from the Jonker-Volgenant column reduction (only from the rows it leaves free, "free"),
by a numpy re-implementation: device-independent, and a launch of a one-problem-per-program GPU solver
costs about its hardest problem's steps. It is the measurement that decided against a warm-started GPU
kernel (docs/performance.md). Ratios are against the first backend listed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time


def problems(kind: str, batch: int, n: int, noise: float, seed: int, device, dtype):
    import torch

    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        c = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    else:
        a = torch.nn.functional.normalize(torch.randn(batch, n, 4 * n, generator=g, dtype=torch.float64), dim=2)
        # noise in units of the scale at which a row's best off-diagonal entry rivals its diagonal one
        scale = noise * (4 * n / (2 * math.log(max(n, 2)))) ** 0.5
        b = a + scale * torch.randn(a.shape, generator=g, dtype=torch.float64) / (4 * n) ** 0.5
        c = a @ b.transpose(1, 2)
    return c.to(device=device, dtype=dtype)


def auction_then_search_steps(cost, eps_final: float = 1e-3, factor: float = 5.0):
    """Sequential steps of an exact solve that first runs a Jacobi auction with ε-scaling (every free row
    bids at once: one step per bidding round; ε from range/10 down to ``eps_final``·range/n, dividing by
    ``factor``) and then makes it exact: its prices as column duals, every row's dual its smallest reduced
    cost, the auction's pairs kept where tight, shortest augmenting path searches from the rest (steps as
    in :func:`search_steps`). Returns (steps, col4row); minimisation ``cost``."""
    import numpy as np

    c = -cost  # the auction maximises
    n = c.shape[0]
    price = np.zeros(n)
    spread = float(c.max() - c.min()) or 1.0
    eps, rounds = spread / 10, 0
    while True:
        col4row, row4col = -np.ones(n, int), -np.ones(n, int)
        while (col4row < 0).any():
            rounds += 1
            free = np.flatnonzero(col4row < 0)
            val = c[free] - price[None, :]
            j1 = val.argmax(axis=1)
            w1 = val[np.arange(len(free)), j1]
            val[np.arange(len(free)), j1] = -np.inf
            bid = price[j1] + (w1 - val.max(axis=1)) + eps
            order = np.lexsort((-bid, j1))  # per column, its highest bid first
            first = np.ones(len(order), bool)
            first[1:] = j1[order][1:] != j1[order][:-1]
            for k in order[first]:
                j, i = j1[k], free[k]
                if row4col[j] >= 0:
                    col4row[row4col[j]] = -1
                row4col[j], col4row[i], price[j] = i, j, bid[k]
        if eps <= eps_final * spread / n:
            break
        eps = max(eps / factor, eps_final * spread / n)
    steps, cols = search_steps(cost, start=(-price, col4row))
    return rounds + steps, cols


def search_steps(cost, warm: bool = False, start=None) -> int:
    """Steps (columns scanned) of the shortest augmenting path searches that solve ``cost`` (minimise):
    from every row with zero duals (torch-linear-assignment's start) or, ``warm``, only from the rows the
    column reduction leaves free (ours). Each step is one pass over a row's columns, so a launch's time
    follows the step count of its hardest problem. A numpy re-implementation (the kernel's work, not its
    time); its assignment is checked against scipy's optimum by the caller."""
    import numpy as np

    n = cost.shape[0]
    u, v = np.zeros(n), np.zeros(n)
    col4row, row4col = -np.ones(n, int), -np.ones(n, int)
    if start is not None:  # (column duals, an assignment): feasible row duals, the tight pairs kept
        v = np.array(start[0], dtype=float)
        u = (cost - v[None, :]).min(axis=1)
        for i, j in enumerate(start[1]):
            if j >= 0 and row4col[j] < 0 and cost[i, j] - u[i] - v[j] <= 1e-12 * max(1.0, abs(cost[i, j])):
                col4row[i], row4col[j] = j, i
    elif warm:
        v = cost.min(axis=0)
        for j, i in enumerate(cost.argmin(axis=0)):
            if col4row[i] < 0:
                col4row[i], row4col[j] = j, i
    steps = 0
    for r in range(n):
        if col4row[r] >= 0:
            continue
        shortest, path, remaining = np.full(n, np.inf), -np.ones(n, int), np.ones(n, bool)
        rows, row_cost, min_val, i, sink = [], np.zeros(n), 0.0, r, -1
        while sink < 0:
            steps += 1
            rows.append(i)
            red = min_val + cost[i] - u[i] - v
            better = remaining & (red < shortest)
            shortest[better], path[better] = red[better], i
            cand = np.where(remaining, shortest, np.inf)
            low = cand.min()
            tied = remaining & (cand == low)
            free = np.flatnonzero(tied & (row4col < 0))
            j = free[0] if len(free) else np.flatnonzero(tied)[0]
            min_val, remaining[j] = low, False
            if row4col[j] < 0:
                sink = j
            else:
                i = row4col[j]
                row_cost[i] = low
        u[r] += min_val
        for i in rows:
            if i != r:
                u[i] += min_val - row_cost[i]
        v[~remaining] -= min_val - shortest[~remaining]
        j = sink
        while True:
            i = path[j]
            row4col[j], prev, col4row[i] = i, col4row[i], j
            if i == r:
                break
            j = prev
    return steps, col4row


def main(argv=None) -> None:
    import numpy as np
    import torch

    from star_merge.matching.solvers import available_solvers, solve_batch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[50],
                        help="problems per batch (50: a round of 50 anchors on one permutation; 400: on eight)")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="structured: noise of B, in units of the level where rows start to compete (1: ~24%% free)")
    parser.add_argument("--kinds", nargs="+", default=["structured", "random"], choices=["structured", "random"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--count-steps", type=int, default=2,
                        help="problems per batch whose search steps are counted (numpy; 0: skip)")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: cuda scipy on a GPU (scipy: the cost matrices copied to host threads), scipy lapjv on the host")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    have = available_solvers()
    backends = args.backends or ([b for b in ("cuda", "scipy") if b in have] if device.type == "cuda"
                                 else [b for b in ("scipy", "lapjv") if b in have])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, {device}, {args.dtype}; backends {backends}")
    print(f"{'kind':>10} {'batch':>5} {'n':>5} {'free':>6} {'steps':>6} {'warm':>6} {'auction':>7} "
          + " ".join(f"{b + ' ms':>10}" for b in backends) + " " + " ".join(f"{'x ' + b:>9}" for b in backends[1:]))
    for kind, batch, n in [(k, b, n) for k in args.kinds for b in args.batch for n in args.sizes]:
        costs = problems(kind, batch, n, args.noise, n, device, dtype)
        # rows the Jonker-Volgenant column reduction leaves free: rows that are no column's best row
        best_rows = (-costs.double()).argmin(dim=1)
        free = 1.0 - float(torch.zeros_like(best_rows).scatter_(1, best_rows, 1).double().mean())
        counted = [(search_steps(c, False), search_steps(c, True), auction_then_search_steps(c))
                   for c in (-costs[:args.count_steps]).double().cpu().numpy()]
        for c, found in zip(costs[:args.count_steps].double().cpu().numpy(), counted):
            best = float(c[np.arange(n), solve_batch(torch.as_tensor(c)[None], "scipy")[0].numpy()].sum())
            if max(abs(float(c[np.arange(n), x].sum()) - best) for _, x in found) > 1e-9 * max(1.0, abs(best)):
                raise SystemExit("search_steps: a re-implementation missed scipy's optimum")
        steps, warm, auction = (statistics.mean(f[k][0] for f in counted) if counted else float("nan") for k in range(3))
        ref = [float(c[np.arange(n), col].sum()) for c, col in
               zip(costs.double().cpu().numpy(), solve_batch(costs.double().cpu(), "scipy").numpy())]
        for b in backends:  # warm-up (compiles the kernels) and the objective check
            cols = solve_batch(costs, b).cpu().numpy()
            got = [float(c[np.arange(n), col].sum()) for c, col in zip(costs.double().cpu().numpy(), cols)]
            worst = max(abs(x - y) / max(1.0, abs(y)) for x, y in zip(got, ref))
            if worst > (1e-9 if dtype == torch.float64 else 1e-5):
                raise SystemExit(f"{b}: objective differs from scipy's by {worst:.2e} (relative) on {kind} n={n}")
        times = {b: [] for b in backends}
        for _ in range(args.rounds):
            for b in backends:
                sync()
                start = time.perf_counter()
                solve_batch(costs, b)
                sync()
                times[b].append(time.perf_counter() - start)
        ms = {b: statistics.median(t) * 1e3 for b, t in times.items()}
        print(f"{kind:>10} {batch:>5} {n:>5} {free:>6.1%} {steps:>6.0f} {warm:>6.0f} {auction:>7.0f} " + " ".join(f"{ms[b]:>10.2f}" for b in backends) + " "
              + " ".join(f"{ms[backends[0]] / ms[b]:>9.2f}" for b in backends[1:]), flush=True)
    print(f"x B: time of {backends[0]} / time of B (> 1: B is faster); every result's objective matched scipy's; "
          "steps / warm: search steps per problem from every row (torch-linear-assignment) / from the rows the "
          "column reduction leaves free (a warm-started search), auction: sequential rounds of an ε-scaling "
          "Jacobi auction + the searches that make it exact; mean of --count-steps problems")


if __name__ == "__main__":
    main()
