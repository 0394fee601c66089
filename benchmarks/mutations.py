"""Mutation gate: would the test suite catch realistic bugs in Starlight, matching, BatchNorm and the Hub code?

Each mutation is (name, file, exact old snippet, new snippet, pytest node ids). For every mutation the
package and its tests are copied into a scratch folder, the snippet is replaced there (never in this
checkout), and the named tests run against the copy (``PYTHONPATH`` points at it). A mutation is

- ``caught``            the tests failed on the mutated code,
- ``MISSED``            they passed: the suite does not see this bug,
- ``snippet not found`` the old snippet is not (exactly once) in the file: the code changed, update the entry,
- ``error``             pytest could not run (collection or usage error, timeout).

The same tests first run unmutated (``baseline``): they must pass, or nothing below means anything.

    python benchmarks/mutations.py              # all mutations, their listed tests
    python benchmarks/mutations.py -k sampler   # mutations whose name contains "sampler"
    python benchmarks/mutations.py --suite      # run the whole suite for every mutation (slow)
    python benchmarks/mutations.py --list       # the mutations, nothing run

Exit status: 0 when every mutation is caught, 1 otherwise. ``make mutations`` runs it (not part of CI).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("star_merge", "tests", "recipes", "pyproject.toml")

REF = "tests/test_starlight_reference.py"
STATE = "tests/test_starlight_state.py"
END_TO_END = "tests/test_starlight_barrier.py"  # slow (about a minute): star<->held-out below anchor<->held-out
TRAINER = "star_merge/starlight/trainer.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    also: tuple[tuple[str, str], ...] = ()  # further (old, new) edits of the same file, for a bug made of several

    @property
    def edits(self) -> tuple[tuple[str, str], ...]:
        return ((self.old, self.new), *self.also)


MUTATIONS = [
    Mutation(
        "interpolation ends swapped (forward at t*theta + (1-t)*anchor, gradient still x (1-t))",
        "star_merge/starlight/flat.py",
        "torch.lerp(theta, anchor, t, out=self.weights)",
        "torch.lerp(theta, anchor, 1.0 - t, out=self.weights)",
        (f"{REF}::test_one_step_matches_the_autograd_reference", END_TO_END),
    ),
    Mutation(
        "rank 0's gradient broadcast instead of all-reduced (rank 1's data ignored)",
        TRAINER,
        "torch.distributed.all_reduce(theta.grad)",
        "torch.distributed.broadcast(theta.grad, 0)",
        (f"{REF}::test_two_processes_equal_one_process_with_the_same_global_batch",),
    ),
    Mutation(
        "all-reduce without dividing by the number of processes",
        TRAINER,
        "torch.distributed.all_reduce(theta.grad)\n                theta.grad.div_(acc.num_processes)",
        "torch.distributed.all_reduce(theta.grad)",
        (f"{REF}::test_two_processes_equal_one_process_with_the_same_global_batch",),
    ),
    Mutation(
        "gradient accumulation ignored (accumulate a no-op)",
        TRAINER,
        "with acc.accumulate():",
        "with __import__('contextlib').nullcontext():",
        (f"{REF}::test_accumulation_of_k_batches_equals_one_batch_k_times_larger",),
    ),
    Mutation(
        "GPT-2 heads never permuted (a whole permutation silently dropped from the spec)",
        "star_merge/adapters/gpt2.py",
        'heads = f"{layer}.heads" if permute_heads else None',
        "heads = None",
        ("tests/test_spec_completeness.py",),
    ),
    # Both recomputations run on the network as the last step left it (an interpolated point). Swapping only
    # the final one is an equivalent mutant here: the end-of-epoch block has already loaded theta by then.
    Mutation(
        "the star's BatchNorm statistics computed before theta is loaded (wrong weights)",
        TRAINER,
        "        self._load_theta_into_model()\n        if self.has_bn:\n"
        "            reset_bn_stats(self.model, self.bn_loader, self.args.bn_reset_batches, acc.device, task=self.task)\n",
        "        if self.has_bn:\n"
        "            reset_bn_stats(self.model, self.bn_loader, self.args.bn_reset_batches, acc.device, task=self.task)\n"
        "        self._load_theta_into_model()\n",
        (f"{STATE}::test_the_star_batchnorm_statistics_are_those_of_theta",),
        also=((
            "            self._load_theta_into_model()\n            reset_bn_stats(",
            "            reset_bn_stats(",
        ),),
    ),
    Mutation(
        "barrier evaluation never resets BatchNorm",
        "star_merge/evaluation/connectivity.py",
        "        reset_bn = has_batchnorm(model)\n    accelerator = data.accelerator",
        "        reset_bn = False\n    accelerator = data.accelerator",
        ("tests/test_bn_evaluation.py",),
    ),
    Mutation(
        "permutation composition order swapped in align_anchors",
        TRAINER,
        "compose_permutations(delta, state.perms[name])",
        "compose_permutations(state.perms[name], delta)",
        (f"{STATE}::test_returned_permutations_align_the_original_anchors_to_the_star",),
    ),
    Mutation(
        "aligned_anchor_state_dicts applies the inverse permutation",
        "star_merge/rundir.py",
        "apply_permutation(self.spec.subset(sd), perms[m.name], sd)",
        "apply_permutation(self.spec.subset(sd), {p: torch.argsort(v) for p, v in perms[m.name].items()}, sd)",
        ("tests/test_bma_alignment.py",),
    ),
    Mutation(
        "sampler epoch not set on a mid-epoch resume",
        TRAINER,
        "        self.train_loader.set_epoch(epoch)\n",
        "        if not state.batches_in_epoch:\n            self.train_loader.set_epoch(epoch)\n",
        (f"{STATE}::test_resume_after_epoch_0_gives_the_same_star",),
    ),
    Mutation(
        "short-sha revision resolution disabled",
        "star_merge/references/resolve.py",
        "elif len(revision) >= 7 and all(",
        "elif False and len(revision) >= 7 and all(",
        ("tests/test_hub.py::test_short_sha_resolves_offline_to_the_full_commit",),
    ),
    Mutation(
        "optimizer.step() removed (theta never moves)",
        TRAINER,
        "            self.optimizer.step()\n",
        "",
        (f"{REF}::test_one_step_matches_the_autograd_reference", END_TO_END),
    ),
    # ---- issue 26: FSDP2 mode (star_merge/starlight/fsdp.py)
    Mutation(
        "FSDP2: each process draws its own (anchor, t) (the shards of one model interpolated at different points)",
        TRAINER,
        "0 if self.fsdp else acc.process_index",
        "acc.process_index",
        ("tests/test_starlight_fsdp.py::test_two_fsdp_processes_equal_one_process_with_the_same_draws",),
    ),
    Mutation(
        "FSDP2: the optimizer state is not restored on resume (AdamW restarts from zero moments)",
        "star_merge/starlight/fsdp.py",
        "raw.load_state_dict({",
        "(lambda d: None)({",
        ("tests/test_starlight_fsdp.py::test_fsdp_resume_after_a_kill_is_exact",),
    ),
    # ---- beyond issue 17's table
    Mutation(
        "gradient not multiplied by (1-t) (the interpolation's chain rule dropped)",
        TRAINER,
        "grad = bound.grads.mul(1.0 - t)",
        "grad = bound.grads.clone()",
        (f"{REF}::test_one_step_matches_the_autograd_reference",),
    ),
    Mutation(
        "weight matching optimises only the first permutation (half-broken matching)",
        "star_merge/matching/weight_matching.py",
        "perm_names = sorted(spec.perm_sizes)",
        "perm_names = sorted(spec.perm_sizes)[:1]",
        ("tests/test_matching.py::test_weight_matching_reduces_barrier_of_trained_models",),
    ),
]


def make_copy(dest: str) -> None:
    for entry in COPIED:
        src = os.path.join(ROOT, entry)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, entry), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif os.path.exists(src):
            shutil.copy2(src, os.path.join(dest, entry))


def apply(copy: str, m: Mutation) -> bool:
    path = os.path.join(copy, m.file)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        text = f.read()
    for old, new in m.edits:
        if text.count(old) != 1:
            return False
        text = text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)
    return True


def run_tests(copy: str, tests, timeout: int) -> tuple[str, float, str]:
    """('pass' | 'fail' | 'error', seconds, tail of the output) of pytest on ``tests`` inside ``copy``."""
    env = dict(os.environ, PYTHONPATH=copy, HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", time.time() - start, f"timed out after {timeout} s"
    seconds = time.time() - start
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return {0: "pass", 1: "fail"}.get(proc.returncode, "error"), seconds, tail


def check_import_path(copy: str) -> None:
    env = dict(os.environ, PYTHONPATH=copy)
    out = subprocess.run([sys.executable, "-c", "import star_merge; print(star_merge.__file__)"], cwd=copy, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not out.startswith(os.path.realpath(copy)) and not out.startswith(copy):
        raise SystemExit(f"error: the scratch copy is not imported (star_merge comes from {out}); "
                         "install star-merge non-editable or run from a venv without it")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", default="", help="only mutations whose name contains this text")
    p.add_argument("--suite", action="store_true", help="run the whole test suite for every mutation")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.k.lower() in m.name.lower()]
    if not chosen:
        print(f"error: no mutation name contains {args.k!r}; see --list", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"- {m.name}\n    {m.file}; tests: {' '.join(m.tests)}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="star-merge-mutations-") as scratch:
        base = os.path.join(scratch, "baseline")
        make_copy(base)
        check_import_path(base)
        needed = ["tests"] if args.suite else sorted({t for m in chosen for t in m.tests})
        status, seconds, tail = run_tests(base, needed, args.timeout)
        print(f"baseline (unmutated, {len(needed)} test targets): {status} in {seconds:.0f} s", flush=True)
        if status != "pass":
            print(tail, file=sys.stderr)
            print("error: the tests fail on the unmutated code; fix that first", file=sys.stderr)
            return 1
        for i, m in enumerate(chosen):
            copy = os.path.join(scratch, f"m{i}")
            make_copy(copy)
            if not apply(copy, m):
                rows.append((m, "snippet not found", 0.0))
                print(f"[{i + 1}/{len(chosen)}] snippet not found: {m.name}", flush=True)
                continue
            status, seconds, tail = run_tests(copy, ["tests"] if args.suite else list(m.tests), args.timeout)
            verdict = {"fail": "caught", "pass": "MISSED", "error": "error"}[status]
            rows.append((m, verdict, seconds))
            print(f"[{i + 1}/{len(chosen)}] {verdict} in {seconds:.0f} s: {m.name}", flush=True)
            if status == "error":
                print("    " + tail.replace("\n", "\n    "), flush=True)
            shutil.rmtree(copy, ignore_errors=True)
    print("\n| bug introduced | file | result | seconds |\n| --- | --- | --- | --- |")
    for m, verdict, seconds in rows:
        print(f"| {m.name} | {m.file} | {verdict} | {seconds:.0f} |")
    caught = sum(v == "caught" for _, v, _ in rows)
    print(f"\n{caught} of {len(rows)} mutations caught")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
