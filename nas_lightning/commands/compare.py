"""``nas-lightning compare``: every method of a study at equal cost on one benchmark, in one table and two plots.

A study config (YAML, ``nas-lightning compare --config study.yaml``) names the methods (``entries``: a name, the
method's ``-c`` files and CLI overrides), the benchmark (``benchmark``: ``-c`` files applied after every method's,
e.g. the shared space and data; ``benchmark_args``), the ground truth, the ranking settings, the seeds and the
cost (``max_epochs`` and/or ``max_steps``, the same for every method). For every method and seed, in
``<output_dir>/<name>/seed<seed>/``:

1. ``nas-lightning fit`` (a clean process, with that folder as its working directory, so the config's relative
   output paths land in it), with the ranking callback too when ``fit_ranking_every_n_epochs`` is set (per-epoch
   CSVs in ``ranking_fit/``, for the ranking variance across epochs);
2. ``nas-lightning validate --ckpt_path <last.ckpt>`` with the ranking callback (``ranking_validate/``);
3. ``result.json``: the figures of ``nas_lightning.metrics.study_table.run_figures`` on the written per-arch CSV,
   the wall time and the peak memory (resident, per child from ``os.wait4``; GPU, ``torch.cuda.max_memory_allocated``
   in the child, when it used CUDA).

It resumes: a run with a ``result.json`` is skipped, a finished fit is not run again, an interrupted fit resumes
from its newest ``last.ckpt`` (``--ckpt_path``). A folder made with other settings (another config, config file
content, override, seed, cost, GT or ranking setting) is refused, naming the differences, never reused.

Then ``<output_dir>/study_table.{csv,md}`` (mean ± sample std over seeds per method, the GT rank of the arch a
method's own search exported where it exports one (``nas_lightning.metrics.search_exports``), and the rows to
beat: the GT's seed-to-seed tau and the params and FLOPs proxies), ``rank_scatter.png`` and ``tau_bars.png``; with
several seeds (or per-epoch rankings) also ``variance/<name>/`` from ``nas-lightning ranking-variance``.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import auto_cli

from nas_lightning.commands.ranking_variance import ranking_variance_command
from nas_lightning.metrics.search_exports import gt_rank, search_result
from nas_lightning.metrics.study_table import (
    method_row,
    proxy_rows,
    read_ranking_csv,
    run_figures,
    save_plots,
    write_table,
)
from nas_lightning.utils.atomic import atomic_write_json
from nas_lightning.utils.study import (
    FIT_FILE,
    RESULT_FILE,
    StudyEntry,
    absolute_inputs,
    check_run_folder,
    config_inputs,
    file_digest,
    input_files,
    last_checkpoint,
    resolved_config,
    run_child,
)

__all__ = ["StudyEntry", "compare", "compare_main"]

#: Trainer options that set the cost: the study sets them for every method, so an entry may not.
COST_OPTIONS = ("--trainer.max_epochs", "--trainer.max_steps", "--trainer.max_time", "--trainer.limit_train_batches")
#: Files above this size (a NATS-Bench archive, say) are identified by size and modification time, not hashed.
HASH_LIMIT_BYTES = 256 * 2**20


def _file_id(path: str) -> str:
    p = Path(path)
    if p.is_file() and p.stat().st_size > HASH_LIMIT_BYTES:
        return f"size {p.stat().st_size}, mtime_ns {p.stat().st_mtime_ns}"
    return file_digest(p)


class Study:
    """The runs of a study, their command lines and settings (arguments as ``compare``'s)."""

    def __init__(self, entries: Sequence[StudyEntry], ground_truth: str, output_dir: str, seeds: Sequence[int],
                 max_epochs: int | None, max_steps: int | None, benchmark: Sequence[str],
                 benchmark_args: Sequence[str], seed_args: Sequence[str], ranking_config: str,
                 max_archs: int | None, ranking_seed: int, k: Sequence[int], fit_ranking_every_n_epochs: int | None,
                 metric: str, nats_dataset: str) -> None:
        names = [e.name for e in entries]
        if not entries or len(set(names)) != len(names):
            raise ValueError(f"entries need distinct names, got {names}")
        if max_epochs is None and max_steps is None:
            raise ValueError("give the cost every method gets: max_epochs and/or max_steps")
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
        for entry in entries:
            for arg in entry.args:
                if arg.split("=")[0] in COST_OPTIONS:
                    raise ValueError(f"entry {entry.name!r} sets {arg.split('=')[0]}: the cost is the study's "
                                     "(max_epochs/max_steps), equal for every method; remove it from the entry")
        if fit_ranking_every_n_epochs is not None and fit_ranking_every_n_epochs < 0:
            raise ValueError(f"fit_ranking_every_n_epochs must be None or >= 0, got {fit_ranking_every_n_epochs}")
        self.entries, self.ground_truth, self.output_dir = list(entries), ground_truth, Path(output_dir)
        self.seeds, self.max_epochs, self.max_steps = list(seeds), max_epochs, max_steps
        self.benchmark, self.benchmark_args, self.seed_args = list(benchmark), list(benchmark_args), list(seed_args)
        self.ranking_config, self.max_archs, self.ranking_seed, self.k = ranking_config, max_archs, ranking_seed, k
        self.fit_every, self.metric, self.nats_dataset = fit_ranking_every_n_epochs, metric, nats_dataset

    @property
    def cost(self) -> str:
        parts = [f"max_epochs={self.max_epochs}" if self.max_epochs is not None else "",
                 f"max_steps={self.max_steps}" if self.max_steps is not None else ""]
        return ", ".join(p for p in parts if p)

    def _ranking_args(self, output_dir: str, every: int, path: Any) -> list[str]:
        # after `-c ranking.yaml`, --trainer.callbacks.X sets the callback that file added (the list's last)
        return ["-c", path(self.ranking_config), "--trainer.callbacks.ground_truth", path(self.ground_truth),
                "--trainer.callbacks.every_n_epochs", str(every),
                "--trainer.callbacks.max_archs", "null" if self.max_archs is None else str(self.max_archs),
                "--trainer.callbacks.seed", str(self.ranking_seed),
                "--trainer.callbacks.k", json.dumps(list(self.k)), "--trainer.callbacks.metric", self.metric,
                "--trainer.callbacks.nats_dataset", self.nats_dataset,
                "--trainer.callbacks.output_dir", output_dir]

    def argv(self, entry: StudyEntry, seed: int, subcommand: str, absolute: bool = True) -> list[str]:
        """The ``nas-lightning`` command line of one run's ``fit`` or ``validate`` (no ``--ckpt_path``); paths
        absolute (the children run in the run folder), or as the study wrote them (the recorded settings)."""
        def path(p: str) -> str:
            return os.path.abspath(p) if absolute else p

        args = [subcommand]
        for i, config in enumerate([*entry.config, *self.benchmark]):
            args += ["-c", os.path.abspath(resolved_config(config, self.folder(entry, seed) / "configs", i))
                     if absolute else config]
        overrides = [*entry.args, *self.benchmark_args, *(a.replace("{seed}", str(seed)) for a in self.seed_args)]
        args += absolute_inputs(overrides) if absolute else overrides
        if self.max_epochs is not None:
            args += ["--trainer.max_epochs", str(self.max_epochs)]
        if self.max_steps is not None:
            args += ["--trainer.max_steps", str(self.max_steps)]
        if subcommand == "validate":
            args += self._ranking_args("ranking_validate", 1, path)
        elif self.fit_every is not None:
            args += self._ranking_args("ranking_fit", self.fit_every, path)
        return args

    def settings(self, entry: StudyEntry, seed: int) -> dict[str, Any]:
        configs = [*entry.config, *self.benchmark]
        inputs = [f for c in configs for f in config_inputs(c)] + input_files([*entry.args, *self.benchmark_args])
        files = [*configs, self.ranking_config, self.ground_truth, *inputs]
        return {"entry": entry.name, "seed": seed, "cost": self.cost,
                "fit": self.argv(entry, seed, "fit", absolute=False),
                "validate": self.argv(entry, seed, "validate", absolute=False),
                "files": {f: _file_id(f) for f in dict.fromkeys(files)}}

    def folder(self, entry: StudyEntry, seed: int) -> Path:
        return self.output_dir / entry.name / f"seed{seed}"


def _child_env() -> dict[str, str]:
    # the children run in the run folder: the repository root (``callbacks``) stays importable
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.getcwd() + (os.pathsep + path if path else "")}


def run_one(study: Study, entry: StudyEntry, seed: int) -> dict[str, Any]:
    """One method and seed: fit (or resume it), validate with the ranking callback, ``result.json``."""
    folder = study.folder(entry, seed)
    settings = study.settings(entry, seed)
    check_run_folder(folder, settings)
    result_file = folder / RESULT_FILE
    if result_file.is_file():
        print(f"[compare] {entry.name} seed {seed}: done before, skipped ({result_file})")
        return json.loads(result_file.read_text())
    log, fit_file = folder / "compare.log", folder / FIT_FILE
    if not fit_file.is_file():
        ckpt = last_checkpoint(folder)
        argv = study.argv(entry, seed, "fit") + (["--ckpt_path", str(ckpt.resolve())] if ckpt else [])
        print(f"[compare] {entry.name} seed {seed}: fit" + (f", resumed from {ckpt}" if ckpt else ""), flush=True)
        fit = run_child(argv, folder, log, _child_env())
        if fit.returncode != 0:
            raise RuntimeError(f"fit of {entry.name} seed {seed} failed (exit {fit.returncode}); see {log}")
        atomic_write_json(fit_file, {"wall_s": fit.wall_s, "peak_rss_mib": fit.peak_rss_mib,
                                     "peak_gpu_mib": fit.peak_gpu_mib, "resumed_from": str(ckpt) if ckpt else None})
    fitted = json.loads(fit_file.read_text())
    ckpt = last_checkpoint(folder)
    if ckpt is None:
        raise FileNotFoundError(f"the fit of {entry.name} wrote no last.ckpt below {folder}: its config needs a "
                                "ModelCheckpoint with save_last: true")
    print(f"[compare] {entry.name} seed {seed}: validate", flush=True)
    val = run_child([*study.argv(entry, seed, "validate"), "--ckpt_path", str(ckpt.resolve())], folder, log,
                    _child_env())
    if val.returncode != 0:
        raise RuntimeError(f"validate of {entry.name} seed {seed} failed (exit {val.returncode}); see {log}")
    csvs = sorted((folder / "ranking_validate").glob("ranking_validate_epoch*.csv"), key=lambda p: p.stat().st_mtime)
    if not csvs:
        raise FileNotFoundError(f"validate of {entry.name} seed {seed} wrote no ranking CSV in "
                                f"{folder / 'ranking_validate'}; see {log}")
    summary = json.loads(csvs[-1].with_suffix(".json").read_text())
    gpu = [g for g in (fitted["peak_gpu_mib"], val.peak_gpu_mib) if g is not None]
    rss = max(fitted["peak_rss_mib"], val.peak_rss_mib)
    result = {"settings": settings, **run_figures(read_ranking_csv(csvs[-1])),
              "gt_seed_to_seed_tau": summary.get("gt_seed_to_seed_tau"),
              "wall_s": fitted["wall_s"] + val.wall_s, "fit_wall_s": fitted["wall_s"], "validate_wall_s": val.wall_s,
              "peak_rss_mib": rss, "peak_gpu_mib": max(gpu) if gpu else None,
              "peak_mib": max(gpu) if gpu else rss, "resumed": fitted["resumed_from"] is not None,
              "ranking_csv": str(csvs[-1].relative_to(folder))}
    atomic_write_json(result_file, result)
    return result


def _variance(study: Study, entry: StudyEntry, top_k: int) -> dict[str, Any] | None:
    """``nas-lightning ranking-variance`` over the seeds (and the fit's epochs, when ranked during fit)."""
    per_epoch = study.fit_every is not None
    runs = []
    for seed in study.seeds:
        folder = study.folder(entry, seed)
        if per_epoch:
            runs.append(f"seed{seed}={folder / 'ranking_fit'}")
        else:
            runs.append(f"seed{seed}={folder / json.loads((folder / RESULT_FILE).read_text())['ranking_csv']}")
    epochs = len(list((study.folder(entry, study.seeds[0]) / "ranking_fit").glob("ranking_fit_epoch*.csv")))
    if len(runs) < 2 and epochs < 2:
        return None
    result = ranking_variance_command(runs, output_dir=str(study.output_dir / "variance" / entry.name),
                                      top_k=top_k, stage="fit" if per_epoch else "validate")
    return result.summary


def compare(entries: list[StudyEntry], ground_truth: str, output_dir: str, seeds: list[int] | None = None,
            max_epochs: int | None = None, max_steps: int | None = None, benchmark: list[str] | None = None,
            benchmark_args: list[str] | None = None,
            seed_args: list[str] | None = None, ranking_config: str = "configs/ranking/ranking.yaml",
            max_archs: int | None = None, ranking_seed: int = 0, k: list[int] | None = None,
            fit_ranking_every_n_epochs: int | None = None, top_k: int = 5, metric: str = "accuracy",
            nats_dataset: str = "cifar10", dry_run: bool = False) -> list[dict[str, Any]]:
    """Run every method of a study at equal cost (resuming), and write one table and plots of their rankings.

    Args:
        entries: the methods: ``{name, config: [yaml, ...], args: [CLI overrides]}``.
        ground_truth: the GT file every ranking is measured against (CSV, JSON or a NATS-Bench API file).
        output_dir: the study's folder: one folder per method and seed, the table and the plots.
        seeds: one run per method and seed (default ``[0]``); ``{seed}`` in ``seed_args`` is replaced by it.
        max_epochs: the cost of every run (``--trainer.max_epochs``); an entry may not set it.
        max_steps: the cost in optimiser steps (``--trainer.max_steps``), instead of or with ``max_epochs``.
        benchmark: ``-c`` files applied after every entry's own (the shared space, data, trainer).
        benchmark_args: CLI overrides for every entry, after its own (``--trainer.accelerator gpu``, say).
        seed_args: how a seed reaches a run (default: ``--seed_everything {seed} --model.init_args.seed {seed}``).
        ranking_config: the ranking callback's config.
        max_archs: rank a seeded subset of this many GT archs (None: all of them).
        ranking_seed: seed of that subset.
        k: precision@k values the callback reports (the table shows P@5).
        fit_ranking_every_n_epochs: also rank during ``fit`` every n epochs (0: at its end only), for the ranking
            variance across epochs; None: only ``validate`` ranks.
        top_k: the top-k whose changes the ranking variance counts.
        metric: the GT column (``accuracy``).
        nats_dataset: the NATS-Bench dataset when the GT is a NATS-Bench file.
        dry_run: run nothing; return (and print) each run's ``fit`` and ``validate`` command lines, paths as
            written (run them from this working directory).
    """
    study = Study(entries, ground_truth, output_dir, [0] if seeds is None else seeds, max_epochs, max_steps,
                  benchmark or [], benchmark_args or [],
                  ["--seed_everything", "{seed}", "--model.init_args.seed", "{seed}"] if seed_args is None
                  else seed_args, ranking_config, max_archs, ranking_seed, [1, 5, 10] if k is None else k,
                  fit_ranking_every_n_epochs, metric, nats_dataset)
    if dry_run:
        # as written (relative to here): absolute ones would write the resolved configs into the run folders
        return [{"entry": e.name, "seed": s, "fit": study.argv(e, s, "fit", absolute=False),
                 "validate": study.argv(e, s, "validate", absolute=False)} for e in study.entries for s in study.seeds]
    for entry in study.entries:  # refuse a stale folder before anything runs
        for seed in study.seeds:
            check_run_folder(study.folder(entry, seed), study.settings(entry, seed))
    results = {e.name: [run_one(study, e, s) for s in study.seeds] for e in study.entries}
    per_method = {name: [read_ranking_csv(study.folder(e, s) / r["ranking_csv"]) for s, r in zip(study.seeds, runs)]
                  for (name, runs), e in zip(results.items(), study.entries)}
    for e in study.entries:  # read at table time, so the table follows the files (and older result.json files)
        for s, result, rows in zip(study.seeds, results[e.name], per_method[e.name]):
            result.update(_search_figures(study.folder(e, s), rows))
    variances = {e.name: _variance(study, e, top_k) for e in study.entries}
    rows = [method_row(name, runs, variances[name]) for name, runs in results.items()]
    first = next(iter(results.values()))[0]
    ceiling = first.get("gt_seed_to_seed_tau")
    rows += proxy_rows(next(iter(per_method.values()))[0], math.nan if ceiling is None else ceiling)
    with_variance = any(v is not None for v in variances.values())
    resumed = [f"{n} seed {s}" for n, runs in results.items() for s, r in zip(study.seeds, runs) if r["resumed"]]
    notes = [f"Resumed after an interruption (wall time of the resumed part only): {', '.join(resumed)}."] \
        if resumed else []
    if with_variance:
        notes.append(f"Ranking variance (nas-lightning ranking-variance, top-k with k={top_k}): {study.output_dir}/"
                     "variance/<method>/.")
    table_csv, table_md = write_table(study.output_dir, rows, study.cost, with_variance, notes)
    save_plots(study.output_dir, per_method, rows, study.cost)
    print(table_md.read_text(), end="")
    print(f"wrote {table_csv}, {table_md}, rank_scatter.png and tau_bars.png in {study.output_dir}")
    return rows


def _search_figures(folder: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The arch the run's own search exported (WPNAS's argmax, DI-NAS's controller, PC-NAS's pool) and its GT rank
    among the ranked archs; nothing for a method without one."""
    found = search_result(folder)
    if found is None:
        return {}
    accuracy = {r["arch"]: float(r["gt_accuracy"]) for r in rows}
    return {"search_arch": found.arch, "search_gt_rank": gt_rank(found.arch, accuracy),
            "search_file": str(found.file.relative_to(folder))}


def compare_main(argv: list[str]) -> None:
    # a terminated study ends its running child too (run_child kills it on the way out), not leaving it orphaned
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = auto_cli(compare, args=argv, as_positional=False)
    if result and "fit" in result[0]:  # --dry_run true
        for run in result:
            for sub in ("fit", "validate"):
                print(f"# {run['entry']} seed {run['seed']}\nnas-lightning {shlex.join(run[sub])}")
