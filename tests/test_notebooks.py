"""Every notebook in notebooks/ runs headless (nbclient) on tiny runs made here, so none can rot.

The runs are the synthetic-data configs of each method (configs/*/*synthetic.yaml) cut to a few steps, with the
callbacks whose files the notebooks read (ranking, disturbance, pool shrinking, controller, policy step, sharing
states, ranking variance); every output path of a config is moved into a temporary folder. The ground truth is
made up (params-driven, two seeds): the notebooks only plot what the files say. A notebook fails the test if any
cell raises or if it draws fewer figures than it should on runs that hold every file it reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the dev extra: pip install -e .[dev]")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the dev extra: pip install -e .[dev]")

from nas_lightning.cli import NASLightningCLI  # noqa: E402
from nas_lightning.commands.ranking_variance import ranking_variance_command  # noqa: E402
from nas_lightning.metrics.ground_truth import GroundTruth, save_ground_truth  # noqa: E402
from nas_lightning.spaces import ChainSpace, NB201Space, SearchSpace  # noqa: E402
from nas_lightning.spaces.arch import Arch  # noqa: E402

ROOT = Path(__file__).parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: Few steps, little evaluation: the runs only need to write every file a notebook reads.
SHORT = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1"]


def made_up_gt(space: SearchSpace, archs: list[Arch], path: Path) -> str:
    """A two-seed GT in which bigger archs are better, with noise: enough for the notebooks to plot."""
    g = torch.Generator().manual_seed(0)
    per_seed = {a: [40.0 + 3.0 * float(space.params(a)) ** 0.25 + torch.randn((), generator=g).item()
                    for _ in range(2)] for a in archs}
    save_ground_truth(path, GroundTruth({a: sum(v) / 2 for a, v in per_seed.items()}, per_seed), space)
    return str(path)


def retargeted(config: str, tmp: Path) -> str:
    """``config`` with every ``runs/...`` output path moved under ``tmp`` (so nothing lands in the checkout)."""
    text = (ROOT / config).read_text()
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / Path(config).name
    out.write_text(re.sub(r"(?<![\w/])runs/", f"{tmp}/runs/", text))
    return str(out)


def fit(config: str, tmp: Path, *args: str) -> Path:
    """``nas-lightning fit`` of the retargeted ``config`` (in this process: one import of torch for all runs);
    returns the run's root folder."""
    path = retargeted(config, tmp)
    NASLightningCLI(["fit", "-c", path, *SHORT, *args])
    return Path(yaml.safe_load(Path(path).read_text())["trainer"]["default_root_dir"])


def search(config: str, run: Path, tmp: Path, *args: str) -> None:
    """``nas-lightning validate`` of the run's last checkpoint with a small evolution (``top_archs.json``)."""
    ckpt = max(run.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    evolution = retargeted("configs/search/evolution_quick.yaml", tmp)
    NASLightningCLI(["validate", "-c", retargeted(config, tmp), "-c", evolution,
                     "--trainer.callbacks.population=4", "--trainer.callbacks.generations=1",
                     "--trainer.callbacks.num_mutation=2", "--trainer.callbacks.num_crossover=2",
                     "--trainer.callbacks.progress=false", f"--trainer.callbacks.output_dir={run}/search", *args,
                     *SHORT, f"--ckpt_path={ckpt}"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny run folder per method, plus a ranking-variance folder over two reduced-sharing seeds."""
    tmp = tmp_path_factory.mktemp("notebook_runs")
    chain = ChainSpace(num_layers=3, C=16, num_classes=10, in_channels=1, input_size=16)
    gt_chain = made_up_gt(chain, list(chain.enumerate()), tmp / "gt_chain.csv")
    nb201 = NB201Space(C=4, N=1, num_classes=10, in_channels=1, input_size=16)
    gt_nb201 = made_up_gt(nb201, nb201.sample_many(16, torch.Generator().manual_seed(0)), tmp / "gt_nb201.csv")
    ranking = ["-c", str(ROOT / "configs/ranking/ranking.yaml"), "--trainer.callbacks.max_archs=12"]
    disturbance = ["-c", str(ROOT / "configs/disturbance/disturbance.yaml"), "--trainer.callbacks.num_archs=8",
                   "--trainer.callbacks.matrix_archs=3"]
    out: dict[str, Path] = {}
    out["spos"] = fit("configs/spos/chain_synthetic.yaml", tmp, *disturbance,
                      f"--trainer.callbacks.ground_truth={gt_chain}", *ranking,
                      f"--trainer.callbacks.ground_truth={gt_chain}")
    search("configs/spos/chain_synthetic.yaml", out["spos"], tmp, *ranking,
           f"--trainer.callbacks.ground_truth={gt_chain}")
    out["pcnas"] = fit("configs/pcnas/chain_synthetic.yaml", tmp, "--trainer.max_epochs=4", *ranking,
                       f"--trainer.callbacks.ground_truth={gt_chain}", "--model.init_args.num_completions=4",
                       "--model.init_args.num_val_batches=1")
    out["dinas"] = fit("configs/dinas/nb201_synthetic.yaml", tmp, "--trainer.max_epochs=3", *disturbance,
                       f"--trainer.callbacks.ground_truth={gt_nb201}", *ranking,
                       f"--trainer.callbacks.ground_truth={gt_nb201}")
    out["wpnas"] = fit("configs/wpnas/chain_synthetic.yaml", tmp, *ranking,
                       f"--trainer.callbacks.ground_truth={gt_chain}")
    out["dcnas"] = fit("configs/dcnas/chain_synthetic.yaml", tmp, "--trainer.max_epochs=3",
                       "--trainer.callbacks.num_archs=16", *ranking, f"--trainer.callbacks.ground_truth={gt_chain}")
    for seed in (0, 1):
        out[f"rs_s{seed}"] = fit("configs/reduced_sharing/chain_synthetic.yaml", tmp / f"s{seed}",
                                 f"--seed_everything={seed}", f"--model.init_args.seed={seed}", *ranking,
                                 f"--trainer.callbacks.ground_truth={gt_chain}")
    out["variance"] = tmp / "ranking_variance"
    ranking_variance_command([f"s{s}={out[f'rs_s{s}']}" for s in (0, 1)], output_dir=str(out["variance"]))
    return out


def _compare(r: dict[str, Path]) -> dict[str, str]:
    return {"NAS_RUNS": f"SPOS={r['spos']},PC-NAS={r['pcnas']},reduced sharing={r['rs_s0']}"}


#: notebook -> (its environment from the runs, the least number of figures it draws on them).
NOTEBOOK_RUNS: dict[str, tuple[Callable[[dict[str, Path]], dict[str, str]], int]] = {
    "ranking_analysis.ipynb": (lambda r: {"NAS_RANKING_DIR": str(next(r["spos"].rglob("ranking")))}, 1),
    "spos.ipynb": (lambda r: {"NAS_RUN_DIR": str(r["spos"])}, 3),
    "pcnas.ipynb": (lambda r: {"NAS_RUN_DIR": str(r["pcnas"])}, 3),
    "dinas.ipynb": (lambda r: {"NAS_RUN_DIR": str(r["dinas"])}, 4),
    "wpnas.ipynb": (lambda r: {"NAS_RUN_DIR": str(r["wpnas"])}, 4),
    "dcnas.ipynb": (lambda r: {"NAS_RUN_DIR": str(r["dcnas"])}, 5),
    "reduced_sharing.ipynb": (lambda r: {"NAS_RUN_DIR": str(r["rs_s0"]), "NAS_VARIANCE_DIR": str(r["variance"])}, 4),
    "compare.ipynb": (_compare, 2),
}


def test_every_notebook_runs_in_ci() -> None:
    """A notebook added to notebooks/ without an entry here would never be executed: refuse it."""
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NOTEBOOK_RUNS)


def figures(nb: Any) -> int:
    """The PNG images the executed notebook displayed."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", sorted(NOTEBOOK_RUNS))
def test_notebook_executes(name: str, runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    env, min_figures = NOTEBOOK_RUNS[name]
    for key, value in env(runs).items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell raises
    assert figures(nb) >= min_figures, f"{name} drew {figures(nb)} figures, expected at least {min_figures}"
