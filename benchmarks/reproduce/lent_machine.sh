#!/usr/bin/env bash
# Issue 14, "star-cnn1d at 50 anchors: train-loss ratio <= 0.25": Starlight from anchor 0 with t ~ Beta(2,2), longer
# training, lr 4e-3 and a small star + CE term (what works for the demo), on a lent machine (16 cores + a GPU), <= 300 s.
#
#   OUT=/path/to/results bash benchmarks/reproduce/lent_machine.sh          # from the repository root
#
# 1. trains (or reuses) the seeded star-cnn1d population of mnist1d_cnn1d.yaml: 50 anchors + 5 held-out;
# 2. runs the candidates below at once (each its own recipe process, the GPU shared), each killed at the deadline;
# 3. writes OUT/variants.json + OUT/variants.png (finished points only) and each point's report.{json,md} and log.
# Env: PYTHON (default python), WORK (scratch, default /tmp/star_merge_lent), DEADLINE_S (candidates are stopped
# this many seconds after the start, default 270; collecting takes ~15 s more), WORKERS (population processes,
# default 12), COUNTS (anchors of the candidates, default 50), REF (anchors of V1's reference point, default 10),
# V1 V2 V3 (the candidates), EXTRA (recipe flags for every point). A small local test:
#   OUT=/tmp/lent WORKERS=2 COUNTS=3 REF=2 EXTRA="num_samples=600 population_epochs=1" \
#   V1="a t_sampling=beta num_train_epochs=1" V2="b num_train_epochs=1" V3="c num_train_epochs=2" bash ...
set -uo pipefail
: "${OUT:?set OUT to the folder for the results}"
PY=${PYTHON:-$(command -v python || command -v python3)}
WORK=${WORK:-/tmp/star_merge_lent}
DEADLINE_S=${DEADLINE_S:-270}
EXTRA=${EXTRA:-}
COUNTS=${COUNTS:-50}
REF=${REF:-10}
WORKERS=${WORKERS:-12}
START=$(date +%s)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3} HF_HUB_OFFLINE=1 TQDM_DISABLE=1 MPLBACKEND=Agg
mkdir -p "$OUT" "$WORK"
SWEEP=(benchmarks/reproduce/variants.py --config recipes/configs/mnist1d_cnn1d.yaml --root "$WORK/root"
       --out "$WORK/sweep" --num_held_out 5 --eval_pairs 10)
[ -n "$EXTRA" ] && SWEEP+=(--set $EXTRA)
# name, then recipe flags (on top of mnist1d_cnn1d.yaml: init anchor, mu = 0, lr 2e-3, AdamW, cosine)
# V1 = the new default demo's Starlight settings (recipes/configs/mnist1d_cnn1d_demo.yaml) at 50 anchors
V1=${V1:-"beta2_lr4_ce02_e60 t_sampling=beta t_beta=2 learning_rate=0.004 star_ce_weight=0.2 num_train_epochs=60"}
V2=${V2:-"beta2_e60 t_sampling=beta t_beta=2 num_train_epochs=60"}
V3=${V3:-"beta2_lr4_ce02_e100 t_sampling=beta t_beta=2 learning_rate=0.004 star_ce_weight=0.2 num_train_epochs=100"}

echo "[lent] population ($(nproc --all) cores, OMP_NUM_THREADS=$OMP_NUM_THREADS)"
"$PY" "${SWEEP[@]}" --counts $COUNTS $REF --workers "$WORKERS" --variant "$V1" --population_only 2>&1 \
    | grep -v "Writing model shards" | tee "$OUT/population.log"
left=$(( DEADLINE_S - ($(date +%s) - START) ))
[ "$left" -lt 30 ] && left=30
echo "[lent] population done at $(( $(date +%s) - START ))s; candidates get ${left}s"
# V1 also at REF anchors: the reference on the same population (same held-out models)
timeout -k 10 "$left" "$PY" "${SWEEP[@]}" --counts $COUNTS $REF --jobs 2 --variant "$V1" > "$OUT/run_v1.log" 2>&1 &
timeout -k 10 "$left" "$PY" "${SWEEP[@]}" --counts $COUNTS --variant "$V2" > "$OUT/run_v2.log" 2>&1 &
timeout -k 10 "$left" "$PY" "${SWEEP[@]}" --counts $COUNTS --variant "$V3" > "$OUT/run_v3.log" 2>&1 &
wait
echo "[lent] candidates stopped at $(( $(date +%s) - START ))s"
"$PY" "${SWEEP[@]}" --counts $COUNTS $REF --variant "$V1" --variant "$V2" --variant "$V3" --collect 2>&1 \
    | tee "$OUT/summary.txt"
cp "$WORK/sweep/variants.json" "$WORK/sweep/variants.png" "$OUT/" 2>/dev/null
for d in "$WORK"/sweep/*/; do
    n=$(basename "$d"); mkdir -p "$OUT/$n"
    cp "$d"/report.json "$d"/report.md "$d"/interpolation_curves.png "$OUT/$n/" 2>/dev/null
    cp "$WORK/sweep/$n.log" "$WORK/sweep/$n.time.json" "$OUT/" 2>/dev/null
done
echo "[lent] done in $(( $(date +%s) - START ))s; results in $OUT"
