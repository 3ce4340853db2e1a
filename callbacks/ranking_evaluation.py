"""How well the supernet ranks archs: inherited-weight accuracy against ground truth.

At chosen epochs of ``fit`` and at the end of ``validate``, the GT archs are evaluated with
inherited weights (``SupernetModule.evaluate``, each rank on its shard, summed), and the callback
logs Kendall tau, Spearman, Pearson, precision@k and the GT rank of the supernet's top arch. Every
figure stands beside its ceiling (the GT's own seed-to-seed tau) and what the params and FLOPs
proxies achieve, and tau over pairs of equal cost is reported too. A per-arch CSV and a JSON summary
are written atomically for each evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info

from callbacks._paths import output_dir
from nas_lightning.commands.cost import read_arch_file
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.metrics.ground_truth import GroundTruth, check_coverage, load_ground_truth
from nas_lightning.metrics.ranking import cost_proxy_metrics, ranking_metrics
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_csv, atomic_write_json
from nas_lightning.utils.distributed import step_generator


def ranking_report(space: SearchSpace, gt: GroundTruth, archs: list[Arch], inherited: list[float],
                   k: tuple[int, ...] = (1, 5, 10)) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of ``inherited`` against the GT of ``archs``, with the ceiling and cost proxies, and
    the per-arch rows. A pure function: it needs no Trainer."""
    target = [gt.accuracy[a] for a in archs]
    params = [float(space.params(a)) for a in archs]
    flops = [float(space.flops(a)) for a in archs]
    summary: dict[str, Any] = {
        "num_archs": len(archs),
        "supernet": ranking_metrics(inherited, target, k=k, costs=flops),
        "proxies": cost_proxy_metrics(target, {"params": params, "flops": flops}),
        "gt_seed_to_seed_tau": gt.restrict(archs).seed_to_seed_tau(),  # the ceiling on these archs
    }
    order = sorted(range(len(archs)), key=lambda i: -inherited[i])
    rows = [{"arch": str(archs[i]), "gt_accuracy": target[i], "inherited_accuracy": inherited[i],
             "params": int(params[i]), "flops": int(flops[i])} for i in order]
    return summary, rows


def format_report(summary: dict[str, Any]) -> str:
    s, p = summary["supernet"], summary["proxies"]
    ceiling = summary["gt_seed_to_seed_tau"]
    lines = [
        f"ranking over {summary['num_archs']} archs      Kendall tau  Spearman  Pearson",
        f"  supernet (inherited)      {s['kendall_tau']:>10.3f}  {s['spearman']:>8.3f}  {s['pearson']:>7.3f}",
    ]
    for name, m in p.items():
        lines.append(f"  {name + ' proxy':<24}  {m['kendall_tau']:>10.3f}  {m['spearman']:>8.3f}  {m['pearson']:>7.3f}")
    lines.append(f"  GT seed-to-seed (ceiling)  {ceiling:>9.3f}" if not math.isnan(ceiling)
                 else "  GT seed-to-seed (ceiling)        n/a (one seed)")
    lines.append(f"  tau over equal-FLOPs pairs: {s.get('kendall_tau_equal_cost', float('nan')):.3f} "
                 f"({s.get('equal_cost_pairs', 0)} pairs); GT rank of the supernet's top arch: {s['top1_gt_rank']}")
    return "\n".join(lines)


class RankingEvaluation(pl.Callback):
    """Rank GT archs with inherited weights and compare with ground truth.

    Args:
        ground_truth: GT file: CSV ``arch,accuracy``, JSON, or a NATS-Bench API file.
        every_n_epochs: evaluate during ``fit`` after every n-th epoch (0: only at the end of fit).
        archs_file: rank only these archs (a text, CSV or JSON file as ``nas-lightning cost`` reads;
            e.g. a search's ``top_archs.json`` or PC-NAS's final candidates); the GT must cover them.
        max_archs: evaluate a seeded subset of at most this many GT archs (None: all).
        seed: seed of that subset.
        k: precision@k values.
        output_dir: where CSV/JSON go (default: ``<trainer.log_dir or default_root_dir>/ranking``).
        metric, nats_dataset: forwarded to the GT loader.
    """

    def __init__(self, ground_truth: str, every_n_epochs: int = 1, archs_file: str | None = None,
                 max_archs: int | None = 100, seed: int = 0,
                 k: tuple[int, ...] = (1, 5, 10), output_dir: str | None = None, metric: str = "accuracy",
                 nats_dataset: str = "cifar10") -> None:
        if every_n_epochs < 0 or (max_archs is not None and max_archs < 2):
            raise ValueError(f"need every_n_epochs >= 0 and max_archs >= 2, got {every_n_epochs}, {max_archs}")
        self.ground_truth_path, self.archs_file = ground_truth, archs_file
        self.every_n_epochs, self.max_archs, self.seed, self.k = every_n_epochs, max_archs, seed, tuple(k)
        self.output_dir, self.metric, self.nats_dataset = output_dir, metric, nats_dataset
        self.gt: GroundTruth | None = None
        self.archs: list[Arch] = []
        self.last_summary: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(ground_truth=self.ground_truth_path)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, SupernetModule):
            raise TypeError(f"RankingEvaluation needs a SupernetModule method, got {type(pl_module).__name__}")
        if self.gt is None:
            self.gt = load_ground_truth(self.ground_truth_path, pl_module.space, metric=self.metric,
                                        nats_dataset=self.nats_dataset)
            wanted = read_arch_file(self.archs_file, pl_module.space) if self.archs_file else self.gt.archs
            covered = check_coverage(self.gt, wanted, self.ground_truth_path)
            if self.max_archs is not None and len(covered) > self.max_archs:
                perm = torch.randperm(len(covered), generator=step_generator(self.seed, "ranking", 0))
                covered = [covered[i] for i in sorted(perm[: self.max_archs].tolist())]
            self.archs = covered

    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) and trainer.max_epochs not in (None, -1)
        return last or (self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer) or self.gt is None:
            return
        assert isinstance(pl_module, SupernetModule)
        inherited = pl_module.evaluate(self.archs).accuracy.tolist()
        summary, rows = ranking_report(pl_module.space, self.gt, self.archs, inherited, self.k)
        summary.update(epoch=trainer.current_epoch, global_step=trainer.global_step, stage=trainer.state.fn.value)
        self.last_summary = summary
        logged = {f"rank/{name}": v for name, v in summary["supernet"].items() if not math.isnan(v)}
        logged.update({f"rank/{p}_kendall_tau": m["kendall_tau"] for p, m in summary["proxies"].items()})
        if not math.isnan(summary["gt_seed_to_seed_tau"]):
            logged["rank/gt_seed_to_seed_tau"] = summary["gt_seed_to_seed_tau"]
        pl_module.log_dict({k: float(v) for k, v in logged.items()}, rank_zero_only=True)
        # trainer.log_dir broadcasts under DDP, so every rank asks for it.
        out = output_dir(trainer, self.output_dir, "ranking")
        if trainer.is_global_zero:
            self._write(trainer, out, summary, rows)
            rank_zero_info(format_report(summary))

    def _write(self, trainer: pl.Trainer, out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        tag = f"{trainer.state.fn.value}_epoch{trainer.current_epoch}"
        atomic_write_csv(out / f"ranking_{tag}.csv", rows)
        atomic_write_json(out / f"ranking_{tag}.json", summary)
