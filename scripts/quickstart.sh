#!/usr/bin/env bash
# The main job on the bundled data: train a SPOS supernet on Fashion-MNIST, search it with evolution,
# and print the best arch (also written to runs/quickstart/search/top_archs.json) with a ranking table.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${VIRTUAL_ENV:-${NAS_LIGHTNING_VENV:-.venv}}/bin"
config=configs/spos/nb201_fashion_mnist_quick.yaml

rm -rf runs/quickstart
echo "== 1/2 training the SPOS supernet ($config)"
"$bin/nas-lightning" fit -c "$config"
echo "== 2/2 evolutionary search with inherited weights"
"$bin/nas-lightning" validate -c "$config" -c configs/search/evolution_quick.yaml \
    --ckpt_path runs/quickstart/checkpoints/last.ckpt
echo "== done: runs/quickstart/search/top_archs.json"
