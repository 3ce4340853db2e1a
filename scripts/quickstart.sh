#!/usr/bin/env bash
# The main job on the bundled data, and the point of the framework: train a SPOS supernet on the 64-arch chain
# space (Fashion-MNIST), search it with evolution, and rank every arch with inherited weights against the shipped
# stand-alone ground truth (configs/ground_truth/results/chain_fashion_mnist_all.csv, made by
# `nas-lightning ground-truth --config configs/ground_truth/chain_fashion_mnist_all.yaml`). Prints the ranking
# table (Kendall tau, tau over equal-params pairs, the GT rank of the found arch, beside the GT's seed-to-seed tau
# and the params proxy). Writes runs/quickstart/: search/top_archs.json, ranking/ (per-arch CSV, JSON summary and
# rank scatter PNG per evaluation; every 5 epochs of fit and at the end), report.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${VIRTUAL_ENV:-${NAS_LIGHTNING_VENV:-.venv}}/bin"
config=configs/quickstart/spos_chain_fashion_mnist.yaml
gt=configs/ground_truth/results/chain_fashion_mnist_all.csv

# One thread unless the caller chose: a float sum taken in another order (2 threads instead of 1) changes the
# whole training run, and the README shows what this prints. Two threads on 2 cores: 25% faster, other numbers.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
rm -rf runs/quickstart
start=$SECONDS
echo "== 1/3 training the SPOS supernet ($config), ranking all 64 archs every 5 epochs"
"$bin/nas-lightning" fit -c "$config"
echo "== 2/3 evolutionary search with inherited weights, then the final ranking"
"$bin/nas-lightning" validate -c "$config" -c configs/quickstart/search.yaml \
    --ckpt_path runs/quickstart/checkpoints/last.ckpt
echo "== 3/3 result ($((SECONDS - start)) s)"
"$bin/python" scripts/quickstart_report.py --run_dir runs/quickstart --ground_truth "$gt"
