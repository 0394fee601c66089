"""Peak host memory, device memory and Starlight step time as the number of anchors grows (5, 20, 50).

    python benchmarks/anchor_scaling.py                     # star-mlp [512, 512], batch 128, CPU
    python benchmarks/anchor_scaling.py --quick             # 5 and 20 anchors
    python benchmarks/anchor_scaling.py --device cuda --model resnet18
    python benchmarks/anchor_scaling.py --lm pythia-160m [--device cuda]   # 9 members, float32 vs bf16

``--lm pythia-160m``: a PolyPythia-160m-sized population (GPTNeoXForCausalLM, 162 M parameters, 9 members, all
held as anchor rows: the most a 9-seed PolyPythias run holds) held in float32 and in bf16, one fresh process each; a real
StarlightTrainer runs two Starlight steps on ``--lm-block``-token blocks (default 512; no alignment) and the
process reports host and device memory; bf16 anchor rows are kept bf16 (half the host memory).

Memory: one fresh subprocess per (N, anchor_device) setting. Each builds the star's model, N anchor state
dicts (random inits: what ``load_checkpoint(...).state_dict()`` hands the trainer in the pipeline), a real
``StarlightTrainer``, the trainer's anchor matrix after a (random) alignment, and runs a few
Starlight steps; it reports its peak resident set (``VmHWM`` of /proc/self/status) above the resident set
before the anchors existed, and ``torch.cuda.max_memory_allocated`` on CUDA. The slope between the
smallest and largest N, divided by the model's size, is the number of model copies each anchor costs.

``--processes 1,2,4`` (anchor sharding): for each process count P, one ``accelerate launch`` of P CPU processes
(gloo); each builds a real sharded StarlightTrainer over the population (``--lm pythia-160m``: 9 bf16 members
of 162 M parameters; default: ``--anchors`` star-mlp members) and reports the anchor rows it holds, its host
peak above its baseline (``VmHWM``; trainer built, then ``--dist-steps`` steps) and device peak, and the
median step time with one all-reduce after the backward and with ``reduce_overlap`` (bucketed, during it),
steps interleaved (``--dist-steps 0``: memory after building the trainer only, no steps). ``--count-only``: the bytes per process counted from the shapes, nothing run (for
populations too big to hold here).

Step time: in one process, one anchor stack per N (built by the trainer), steps timed in interleaved
rounds; ratios are to the smallest N. On a CPU-only machine anchor_device=cpu and =accelerator are the
same thing (the anchors stay where the model is), so only cpu is measured there.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field of this process in KiB (``VmRSS``: resident now, ``VmHWM``: peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def build_trainer(model: str, num_anchors: int, device: str, anchor_device: str, batch_size=None):
    """A real StarlightTrainer over ``num_anchors`` random-init anchors, and its model setup."""
    import numpy as np
    import torch
    from datasets import Dataset, DatasetDict
    from starlight_step import make_accelerator, model_setup

    from star_merge.starlight import StarlightConfig, StarlightTrainer
    from star_merge.modeling import build_model

    cfg, batch, input_name, shape = model_setup(model, batch_size)
    x = np.zeros((batch, *shape), dtype=np.float32)
    data = DatasetDict(train=Dataset.from_dict({input_name: x, "labels": np.zeros(batch, dtype=np.int64)}))
    # As the pipeline does: each anchor is built (loaded) on demand and copied into the trainer's matrix.
    anchors = [(f"anchor-{i:02d}", functools.partial(lambda s: build_model(cfg, seed=s).state_dict(), 1 + i))
               for i in range(num_anchors)]
    config = StarlightConfig(anchor_device=anchor_device, per_device_train_batch_size=batch, num_train_epochs=1)
    trainer = StarlightTrainer(model=cfg, args=config, anchors=anchors, train_dataset=data["train"], accelerator=make_accelerator(device))
    return trainer, torch.device(trainer.accelerator.device)


def aligned_flats(trainer, device):
    """The trainer's anchor stack after an alignment (random permutations stand in for matching)."""
    from star_merge.spec import random_permutation

    for i in range(len(trainer.anchor_names)):
        trainer.permute_row(i, random_permutation(trainer.match_spec, seed=i))
    return trainer.anchors


def worker(args) -> None:
    """One memory measurement; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    from starlight_step import Bench, model_setup

    from star_merge.modeling import build_model

    cfg, *_ = model_setup(args.model, args.batch_size)
    model_bytes = sum(p.numel() for p in build_model(cfg, seed=0).parameters()) * 4
    import accelerate  # noqa: F401
    import transformers  # noqa: F401  (imports done before the baseline)

    if torch.cuda.is_available() and args.device == "cuda":
        torch.cuda.init()
    base_kib = status_kib("VmRSS")
    trainer, device = build_trainer(args.model, args.worker, args.device, args.anchor_device, args.batch_size)
    aligned = aligned_flats(trainer, device)
    bench = Bench(args.model, 0, args.device, args.batch_size, anchors=aligned)
    step, _ = bench.starlight()
    for i in range(5):
        step(i)
    out = {
        "N": args.worker, "anchor_device": args.anchor_device, "model_mb": model_bytes / 2**20,
        "host_peak_mb": (status_kib("VmHWM") - base_kib) / 1024, "host_now_mb": (status_kib("VmRSS") - base_kib) / 1024,
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan"),
    }
    print("RESULT " + json.dumps(out))


def pythia_160m_config():
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=2048, rotary_pct=0.25,
                         use_parallel_residual=True, tie_word_embeddings=False, architectures=["GPTNeoXForCausalLM"])


def lm_worker(args) -> None:
    """One LM-population memory measurement (``--lm``); prints one JSON line."""
    import torch
    from datasets import Dataset

    import accelerate  # noqa: F401
    import transformers  # noqa: F401  (imports done before the baseline)
    from starlight_step import make_accelerator

    from star_merge.modeling import build_model
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    torch.set_num_threads(args.threads or torch.get_num_threads())
    dtype = getattr(torch, args.lm_dtype)
    cfg = pythia_160m_config()

    base = build_model(cfg, seed=1).state_dict()  # one random init (values do not change memory; 9 inits are slow)

    def load(i):  # what load_checkpoint(...).state_dict() hands over for a population saved in `dtype`: a fresh copy
        return {k: (v.to(dtype) if v.is_floating_point() else v).clone() for k, v in base.items()}

    anchors = [(f"anchor-{i}", functools.partial(load, i)) for i in range(args.anchors[0])]
    base_kib = status_kib("VmRSS")  # the one template model is not the trainer's
    data = Dataset.from_dict({"input_ids": [[i % 50000 for i in range(args.lm_block)]] * 2})
    config = StarlightConfig(num_train_epochs=1, per_device_train_batch_size=1, align_every=0,
                             anchor_device=args.anchor_device)
    trainer = StarlightTrainer(model=cfg, args=config, anchors=anchors, train_dataset=data,
                               accelerator=make_accelerator(args.device))
    anchor_mb = trainer.anchors.numel() * trainer.anchors.element_size() / 2**20
    trainer._setup()  # the steps of train(), without its alignments (9 weight matchings of 160M models: slow here)
    for _, batch in zip(range(2), trainer.train_loader):
        trainer._step(0, batch)
    device = trainer.accelerator.device
    out = {"dtype": args.lm_dtype, "N": args.anchors[0], "anchor_matrix_mb": anchor_mb,
           "params_m": trainer.layout.total / 1e6,
           "host_peak_mb": (status_kib("VmHWM") - base_kib) / 1024, "host_now_mb": (status_kib("VmRSS") - base_kib) / 1024,
           "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")}
    print("RESULT " + json.dumps(out))


def lm_main(args) -> None:
    print(f"{args.lm}-sized population of {args.anchors[0]} members, {args.device}; one fresh process per dtype")
    rows = []
    for dtype in ("float32", "bfloat16"):
        cmd = [sys.executable, os.path.abspath(__file__), "--lm", args.lm, "--lm-worker", "--lm-dtype", dtype,
               "--anchors", str(args.anchors[0]), "--device", args.device, "--threads", str(args.threads),
               "--anchor-device", args.anchor_device, "--lm-block", str(args.lm_block)]
        print(f"[memory] {dtype} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"worker {dtype} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    print(f"{'population dtype':<17} {'N':>3} {'params (M)':>10} {'anchor rows MiB':>16} {'host peak MiB':>14} "
          f"{'host now MiB':>13} {'device peak MiB':>16}")
    for r in rows:
        print(f"{r['dtype']:<17} {r['N']:>3} {r['params_m']:>10.1f} {r['anchor_matrix_mb']:>16.1f} "
              f"{r['host_peak_mb']:>14.1f} {r['host_now_mb']:>13.1f} {r['device_peak_mb']:>16.1f}")
    print(f"bf16 / float32 host peak: {rows[1]['host_peak_mb'] / rows[0]['host_peak_mb']:.3f}")


def _training_bytes(params: int, world: int, n: int, anchor_bytes: int) -> dict:
    """Bytes one process holds for the star and its share of the anchors (float32 training state, AdamW)."""
    share = -(-n // world)  # the largest share
    # the model's own parameters (rebound to the weight buffer), θ, the gradient buffer, θ's gradient, 2 AdamW states
    return {"anchor_rows_bytes": share * params * anchor_bytes, "star_state_bytes": 5 * params * 4}


def dist_worker(args) -> None:
    """One process of a ``--processes`` run: memory and step times; process 0 prints one JSON line for all."""
    import time

    import torch
    from accelerate.utils import gather_object
    from datasets import Dataset

    import accelerate  # noqa: F401
    import transformers  # noqa: F401  (imports done before the baseline)
    from star_merge.modeling import build_model
    from star_merge.starlight import StarlightConfig, StarlightTrainer

    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.lm:
        cfg, dtype, n = pythia_160m_config(), torch.bfloat16, args.anchors[0]
        data = Dataset.from_dict({"input_ids": [[i % 50000 for i in range(args.lm_block)]] * 64})
    else:
        from starlight_step import model_setup

        cfg, batch, input_name, shape = model_setup(args.model, args.batch_size)
        dtype, n = torch.float32, args.anchors[0]
        data = Dataset.from_dict({input_name: torch.randn(batch * 64, *shape).numpy(),
                                  "labels": [i % 10 for i in range(batch * 64)]})
    base = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in build_model(cfg, seed=1).state_dict().items()}

    def load(i):
        return {k: (v.to(dtype) if v.is_floating_point() else v).clone() for k, v in base.items()}

    base_kib = status_kib("VmRSS")
    config = StarlightConfig(num_train_epochs=1, align_every=0, anchor_sharding="auto", reduce_bucket_mb=args.bucket_mb,
                             per_device_train_batch_size=1 if args.lm else batch)
    trainer = StarlightTrainer(model=cfg, args=config, anchors=[(f"a{i}", functools.partial(load, i)) for i in range(n)],
                               train_dataset=data)
    built_kib = status_kib("VmHWM") - base_kib
    acc = trainer.accelerator
    if args.dist_steps == 0:  # memory of the anchors and the star model only
        rows = gather_object([{"rank": acc.process_index, "anchors_held": trainer.store.rows.shape[0],
                               "anchor_rows_mb": trainer.store.nbytes / 2**20, "host_after_build_mb": built_kib / 1024,
                               "host_peak_mb": built_kib / 1024, "device_peak_mb": float("nan"),
                               "ms_step": float("nan"), "ms_step_overlap": float("nan")}])
        if acc.is_main_process:
            print("RESULT " + json.dumps({"processes": acc.num_processes, "rows": rows}))
        return
    trainer._setup()
    batches = [b for _, b in zip(range(4), trainer.train_loader)]
    times = {False: [], True: []}
    reducers = {}
    for overlap in (False, True):
        trainer.args.reduce_overlap = overlap
        reducers[overlap] = type(trainer.reducer)(trainer.model, trainer.layout, trainer.bound.grads,
                                                  acc.num_processes, overlap,
                                                  int(trainer.args.reduce_bucket_mb * 2**20) // 4)
    for step in range(args.dist_steps):
        for overlap in (False, True):  # interleaved
            trainer.reducer = reducers[overlap]
            trainer.state.batches_in_epoch = step
            acc.wait_for_everyone()
            started = time.perf_counter()
            trainer._step(0, batches[step % len(batches)])
            times[overlap].append(time.perf_counter() - started)
    row = {"rank": acc.process_index, "anchors_held": trainer.store.rows.shape[0],
           "anchor_rows_mb": trainer.store.nbytes / 2**20, "host_after_build_mb": built_kib / 1024,
           "host_peak_mb": (status_kib("VmHWM") - base_kib) / 1024,
           "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan"),
           "ms_step": 1e3 * statistics.median(times[False][1:] or times[False]),
           "ms_step_overlap": 1e3 * statistics.median(times[True][1:] or times[True]),
           "params_m": trainer.layout.total / 1e6}
    rows = gather_object([row])
    if acc.is_main_process:
        print("RESULT " + json.dumps({"processes": acc.num_processes, "rows": rows}))


def processes_main(args) -> None:
    counts = [int(p) for p in args.processes.split(",")]
    n = args.anchors[0]
    label = f"{args.lm}-sized, {n} bf16 members" if args.lm else f"star-{args.model}, {n} float32 members"
    print(f"anchor sharding, {label}; one accelerate launch per process count (CPU processes, gloo)")
    if args.count_only:
        import torch
        from starlight_step import model_setup

        from star_merge.modeling import model_class_for

        cfg = pythia_160m_config() if args.lm else model_setup(args.model)[0]
        with torch.device("meta"):  # shapes only
            params = sum(p.numel() for p in model_class_for(cfg)(cfg).parameters())
        print(f"{params / 1e6:.1f} M parameters per member; MB = 10^6 bytes")
        print(f"{'P':>2} {'anchor rows, largest share':>27} {'star state / process':>21} {'node: sharded':>14} "
              f"{'node: unsharded':>16}")
        width = 2 if args.lm else 4
        for p in counts:
            b = _training_bytes(params, p, n, width)
            sharded = n * params * width + p * b["star_state_bytes"]
            unsharded = p * (n * params * width + b["star_state_bytes"])
            print(f"{p:>2} {b['anchor_rows_bytes'] / 1e6:>27.1f} {b['star_state_bytes'] / 1e6:>21.1f} "
                  f"{sharded / 1e6:>14.1f} {unsharded / 1e6:>16.1f}")
        return
    print(f"{'P':>2} {'rank':>4} {'anchors':>7} {'rows MiB':>9} {'host built MiB':>14} {'host peak MiB':>13} "
          f"{'device MiB':>10} {'ms/step':>8} {'overlap':>8}")
    for p in counts:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(p), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", *(["--multi_gpu"] if p > 1 else []),
               "--main_process_port", str(29700 + p), os.path.abspath(__file__), "--dist-worker",
               "--anchors", str(n), "--model", args.model, "--threads", str(args.threads),
               "--lm-block", str(args.lm_block), "--dist-steps", str(args.dist_steps), "--bucket-mb", str(args.bucket_mb)]
        cmd += ["--lm", args.lm] if args.lm else []
        cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"{p} processes failed:\n{proc.stderr[-3000:]}")
        for r in json.loads(lines[-1][len("RESULT "):])["rows"]:
            print(f"{p:>2} {r['rank']:>4} {r['anchors_held']:>7} {r['anchor_rows_mb']:>9.1f} "
                  f"{r['host_after_build_mb']:>14.1f} {r['host_peak_mb']:>13.1f} {r['device_peak_mb']:>10.1f} "
                  f"{r['ms_step']:>8.2f} {r['ms_step_overlap']:>8.2f}", flush=True)


def run_worker(n: int, anchor_device: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n), "--anchor-device", anchor_device,
           "--model", args.model, "--device", args.device, "--threads", str(args.threads)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"worker N={n} anchor_device={anchor_device} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn1d", "resnet", "resnet18"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--anchors", type=int, nargs="+", default=[5, 20, 50], help="anchor counts to compare")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved step-timing rounds")
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--quick", action="store_true", help="5 and 20 anchors, 5 rounds")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--anchor-device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--lm", default=None, choices=["pythia-160m"], help="an LM population (9 members)")
    parser.add_argument("--lm-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lm-dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--lm-block", type=int, default=512, help="tokens per block of the two LM steps")
    parser.add_argument("--processes", default=None, help="anchor sharding over these process counts, e.g. 1,2,4")
    parser.add_argument("--count-only", action="store_true", help="--processes: count bytes, run nothing")
    parser.add_argument("--dist-steps", type=int, default=20, help="--processes: timed steps per variant")
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="--processes: reduce_bucket_mb of the overlap")
    parser.add_argument("--dist-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker(args)
    if args.processes or args.dist_worker:
        if args.anchors == [5, 20, 50]:
            args.anchors = [9]
        return dist_worker(args) if args.dist_worker else processes_main(args)
    if args.lm:
        if args.anchors == [5, 20, 50]:
            args.anchors = [9]
        return lm_worker(args) if args.lm_worker else lm_main(args)
    if args.quick:
        args.anchors, args.rounds = [5, 20], min(args.rounds, 5)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    from starlight_step import Bench, time_variants

    placements = ["cpu", "accelerator"] if args.device == "cuda" else ["cpu"]
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} thread(s); model {args.model}")
    if args.device == "cpu":
        print("CPU only: anchor_device=cpu and =accelerator coincide (anchors live where the model runs); measuring cpu.")

    mem = []
    for placement in placements:
        for n in args.anchors:
            print(f"[memory] N={n} anchor_device={placement} (fresh process) ...", flush=True)
            mem.append(run_worker(n, placement, args))

    timings = {}
    for placement in placements:
        steps = {}
        for n in args.anchors:
            print(f"[steps] building {n} aligned anchors, anchor_device={placement} ...", flush=True)
            trainer, device = build_trainer(args.model, n, args.device, placement, args.batch_size)
            bench = Bench(args.model, 0, args.device, args.batch_size, anchors=aligned_flats(trainer, device))
            steps[n] = bench.starlight()[0]
            del trainer
        times = time_variants(steps, args.rounds, args.steps, device)
        base = args.anchors[0]
        for n in args.anchors:
            timings[(placement, n)] = (1e3 * statistics.median(times[n]),
                                       statistics.median(a / b for a, b in zip(times[n], times[base])))

    model_mb = mem[0]["model_mb"]
    print()
    print(f"model: {model_mb:.2f} MiB of float32 parameters")
    print(f"{'anchor_device':<13} {'N':>3} {'host peak MiB':>14} {'/ N / model':>12} {'host now MiB':>13} "
          f"{'device peak MiB':>16} {'ms/step':>8} {'x N=' + str(args.anchors[0]):>8}")
    for m in mem:
        ms, ratio = timings[(m["anchor_device"], m["N"])]
        print(f"{m['anchor_device']:<13} {m['N']:>3} {m['host_peak_mb']:>14.1f} {m['host_peak_mb'] / m['N'] / model_mb:>12.2f} "
              f"{m['host_now_mb']:>13.1f} {m['device_peak_mb']:>16.1f} {ms:>8.3f} {ratio:>8.3f}")
    for placement in placements:
        rows = [m for m in mem if m["anchor_device"] == placement]
        lo, hi = rows[0], rows[-1]
        for key, label in (("host_peak_mb", "peak"), ("host_now_mb", "resident after the steps")):
            slope = (hi[key] - lo[key]) / (hi["N"] - lo["N"]) / model_mb
            print(f"anchor_device={placement}: host memory {label}, slope N={lo['N']}..{hi['N']}: "
                  f"{slope:.2f} model copies per anchor")


if __name__ == "__main__":
    main()
