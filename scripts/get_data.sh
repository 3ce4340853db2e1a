#!/usr/bin/env bash
# The bundled default data set: Fashion-MNIST. As root, Debian's package dataset-fashion-mnist
# (/usr/share/datasets/fashion-mnist); otherwise torchvision downloads it into ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
debian=/usr/share/datasets/fashion-mnist
if [ -f "$debian/train-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST found in $debian"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian package dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
elif [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ] || [ -f data/FashionMNIST/raw/train-images-idx3-ubyte.gz ]; then
    echo "Fashion-MNIST found in ./data"
else
    echo "downloading Fashion-MNIST into ./data with torchvision"
    "${VIRTUAL_ENV:-${NAS_LIGHTNING_VENV:-.venv}}/bin/python" -c \
        "import torchvision; torchvision.datasets.FashionMNIST('data', train=True, download=True); torchvision.datasets.FashionMNIST('data', train=False, download=True)"
fi
