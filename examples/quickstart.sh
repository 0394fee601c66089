#!/usr/bin/env bash
# docs/quickstart.md, "From N checkpoints to a published star": the same commands, at tiny size (CI runs this
# through tests/test_quickstart.py). Run from the repository root: bash examples/quickstart.sh
set -euo pipefail

# 1. You have N checkpoints of one architecture (here 3 tiny star-mlp models; yours are folders or Hub ids).
python recipes/train_population.py --model_type star-mlp --model_config '{"hidden_sizes": [32]}' --num_samples 600 --num_anchors 2 --num_held_out 1 --population_epochs 2 --output_dir quickstart/checkpoints
# 2. The star, its evaluation (report.md), the BMA and the model cards, in one run directory.
python recipes/star.py --anchors quickstart/checkpoints/anchor-00 quickstart/checkpoints/anchor-01 --held_out quickstart/checkpoints/held-out-00 --dataset_name mnist1d --num_samples 600 --num_train_epochs 2 --learning_rate 0.003 --bma_samples 2 --eval_num_points 3 --output_dir quickstart/run
# 3. What the push uploads, star and BMA (drop --dry_run to publish, after `hf auth login`).
star-merge push quickstart/run --repo-id me/quickstart-star --bma-repo-id me/quickstart-star-bma --dry_run
# 4. The free baseline: the same checkpoints merged without training (cycle-consistent matching, REPAIR on the run's data).
star-merge merge quickstart/run --method cycle --repair --output_dir quickstart/run/merged-cycle
# 5. What its push uploads (the same publishing path; drop --dry_run to publish).
star-merge push quickstart/run/merged-cycle --repo-id me/quickstart-merged --dry_run
