#!/usr/bin/env bash
# Create (or reuse) the project's environment. A second run with unchanged dependency files does
# nothing. Inside an already active virtualenv, that env is used and a working torch in it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VIRTUAL_ENV:-${NAS_LIGHTNING_VENV:-.venv}}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.nas-lightning-installed"
want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import nas_lightning" 2>/dev/null; then
    echo "environment $VENV is up to date"
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
pip_install() {
    # The local package mirror warns about every index folder it lacks; those lines are noise.
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
if "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    echo "keeping the installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
    pip_install -e ".[dev]"
else
    echo "installing torch and torchvision from requirements/constraints.txt (a few minutes)"
    pip_install -c requirements/constraints.txt -e ".[dev]"
fi
echo "$want" > "$stamp"
