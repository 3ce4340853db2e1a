"""``nas-lightning compare``: a tiny study (2 methods on synthetic data, each run as real ``fit`` and ``validate``
subprocesses) end to end; its table against scipy on the per-arch CSVs the runs wrote; skipping, resuming and
refusing stale folders."""

from __future__ import annotations

import csv
import io
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import kendalltau, spearmanr

from nas_lightning.cli import main
from nas_lightning.commands.compare import Study, compare
from nas_lightning.metrics.study_table import markdown_table, read_ranking_csv
from nas_lightning.spaces import ChainSpace
from nas_lightning.utils.study import StaleRunError, StudyEntry, check_run_folder, settings_differences

REPO = Path(__file__).resolve().parents[1]
# the smallest data that still trains: seconds per process beyond the imports
SMALL_DATA = ["--data.init_args.num_train", "256", "--data.init_args.num_test", "64", "--data.init_args.image_size",
              "8", "--trainer.enable_progress_bar", "false", "--model.init_args.space.init_args.C", "4"]


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def write_gt(path: Path) -> None:
    """A GT of 16 of the chain space's 64 archs with 2 seeds (values made up: only the ranking arithmetic is
    tested)."""
    space = ChainSpace(num_layers=3, C=4)
    g = torch.Generator().manual_seed(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "accuracy_seed0", "accuracy_seed1"])
        for arch in list(space.enumerate())[::4]:
            base = 50 + 20 * float(torch.rand(1, generator=g))
            w.writerow([space.encode(arch), base + 3 * float(torch.rand(1, generator=g)),
                        base + 3 * float(torch.rand(1, generator=g))])


def study_config(tmp: Path, **changes: Any) -> Path:
    config = {
        "entries": [
            {"name": "SPOS", "config": [str(tmp / "spos.yaml")]},
            {"name": "RS-g4", "config": [str(REPO / "configs/reduced_sharing/chain_synthetic.yaml")],
             "args": ["--model.init_args.groups", "4"]},
        ],
        "ground_truth": str(tmp / "gt.csv"),
        "output_dir": str(tmp / "out"),
        "seeds": [0],
        "max_epochs": 1,
        "benchmark_args": SMALL_DATA,
        "ranking_config": str(REPO / "configs/ranking/ranking.yaml"),
        **changes,
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("compare")
    write_gt(tmp / "gt.csv")
    shutil.copy(REPO / "configs/spos/chain_synthetic.yaml", tmp / "spos.yaml")  # a copy the tests may edit
    main(["compare", "--config", str(study_config(tmp))])
    return tmp


def test_study_runs_end_to_end_and_table_matches_scipy(study: Path) -> None:
    table = {r["method"]: r for r in read_csv(study / "out/study_table.csv")}
    assert list(table)[:2] == ["SPOS", "RS-g4"]
    for name in ("SPOS", "RS-g4"):
        result = json.loads((study / "out" / name / "seed0/result.json").read_text())
        rows = read_csv(study / "out" / name / "seed0" / result["ranking_csv"])
        assert len(rows) == 16  # every GT arch ranked
        gt = [float(r["gt_accuracy"]) for r in rows]
        inherited = [float(r["inherited_accuracy"]) for r in rows]
        params = [int(r["params"]) for r in rows]
        assert float(table[name]["kendall_tau"]) == pytest.approx(kendalltau(inherited, gt).statistic, abs=1e-9)
        assert float(table[name]["spearman"]) == pytest.approx(spearmanr(inherited, gt).statistic, abs=1e-6)
        # tau-b over the pairs of equal params, by hand: sum of sign products over sqrt(untied pairs in each)
        pairs = [(i, j) for i, j in itertools.combinations(range(16), 2) if params[i] == params[j]]
        assert pairs, "the chain space has archs of equal params"
        sign = [(np.sign(inherited[i] - inherited[j]), np.sign(gt[i] - gt[j])) for i, j in pairs]
        untied = sum(p != 0 for p, _ in sign) * sum(t != 0 for _, t in sign)
        assert float(table[name]["kendall_tau_equal_params"]) == pytest.approx(
            sum(p * t for p, t in sign) / np.sqrt(untied), abs=1e-9)
        best = max(range(16), key=lambda i: inherited[i])
        assert float(table[name]["top1_gt_rank"]) == 1 + sum(g > gt[best] for g in gt)
        top5 = set(sorted(range(16), key=lambda i: -inherited[i])[:5]) & set(sorted(range(16),
                                                                                key=lambda i: -gt[i])[:5])
        assert float(table[name]["precision@5"]) == len(top5) / 5
        assert float(table[name]["wall_s"]) > 0 and float(table[name]["peak_mib"]) > 100  # a torch process
        assert result["resumed"] is False
    gt_rows = read_csv(study / "gt.csv")
    ceiling = kendalltau([float(r["accuracy_seed0"]) for r in gt_rows], [float(r["accuracy_seed1"]) for r in gt_rows])
    assert float(table["GT seed-to-seed (ceiling)"]["kendall_tau"]) == pytest.approx(ceiling.statistic, abs=1e-6)
    rows = read_csv(study / "out/SPOS/seed0" / json.loads((study / "out/SPOS/seed0/result.json").read_text())
                    ["ranking_csv"])
    assert float(table["params proxy"]["kendall_tau"]) == pytest.approx(
        kendalltau([int(r["params"]) for r in rows], [float(r["gt_accuracy"]) for r in rows]).statistic, abs=1e-9)
    md = (study / "out/study_table.md").read_text()
    assert "max_epochs=1" in md and "| SPOS | 1 |" in md
    for png in ("rank_scatter.png", "tau_bars.png"):
        assert (study / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_rerun_skips_finished_runs(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = {p: p.read_text() for p in (study / "out").rglob("compare.log")}
    main(["compare", "--config", str(study / "study.yaml")])
    out = capsys.readouterr().out
    assert out.count("done before, skipped") == 2
    assert {p: p.read_text() for p in (study / "out").rglob("compare.log")} == logs  # no process ran


def test_interrupted_run_resumes_from_last_checkpoint(study: Path) -> None:
    folder = study / "out/RS-g4/seed0"
    before = json.loads((folder / "result.json").read_text())
    # the state a run killed after its last checkpoint leaves: no fit.json, no result.json
    (folder / "result.json").unlink()
    (folder / "fit.json").unlink()
    main(["compare", "--config", str(study / "study.yaml")])
    after = json.loads((folder / "result.json").read_text())
    assert after["resumed"] is True
    fit_commands = [line for line in (folder / "compare.log").read_text().splitlines() if " fit -c " in line]
    assert "--ckpt_path" in fit_commands[-1] and "last.ckpt" in fit_commands[-1]
    for key in ("kendall_tau", "spearman", "top1_gt_rank", "top1_arch"):  # the same weights, ranked again
        assert after[key] == before[key]


def test_changed_setting_with_the_same_folder_is_refused(study: Path) -> None:
    with pytest.raises(StaleRunError, match=r"cost: \"max_epochs=1\" -> \"max_epochs=2\""):
        main(["compare", "--config", str(study_config(study, max_epochs=2))])
    spos = study / "spos.yaml"
    original = spos.read_text()
    try:
        spos.write_text(original.replace("lr: 0.05", "lr: 0.1"))  # the same file name, another content
        with pytest.raises(StaleRunError, match=r"files\..*spos\.yaml"):
            main(["compare", "--config", str(study_config(study))])
    finally:
        spos.write_text(original)
    assert not (study / "out/SPOS/seed1").exists()


def test_folder_claims_and_differences(tmp_path: Path) -> None:
    check_run_folder(tmp_path / "run", {"a": 1, "b": {"c": [1, 2]}})
    check_run_folder(tmp_path / "run", {"a": 1, "b": {"c": [1, 2]}})  # the same settings: fine
    with pytest.raises(StaleRunError, match=r"b\.c: \[1, 2\] -> \[1, 3\]"):
        check_run_folder(tmp_path / "run", {"a": 1, "b": {"c": [1, 3]}})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("not a run")
    with pytest.raises(StaleRunError, match=r"no settings\.json"):
        check_run_folder(tmp_path / "foreign", {"a": 1})
    assert settings_differences({"x": 1}, {"x": 1, "y": 2}) == ["y: null -> 2"]


def test_input_files_resolve_from_the_run_folder_and_join_the_settings(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The children run in their run folder: a relative input file a config or an override names (a GT, a
    predictor) is made absolute for them, its hash is part of the settings; output folders stay relative."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs/gt.csv").write_text("arch,accuracy\n")
    (tmp_path / "inputs/pred.pt").write_bytes(b"weights")
    (tmp_path / "runs/old").mkdir(parents=True)  # an existing output folder is not an input
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({
        "trainer": {"default_root_dir": "runs/old"},
        "model": {"init_args": {"landmark": {"init_args": {"ground_truth": "inputs/gt.csv"}}, "accelerator": "cpu"}}}))
    study = Study([StudyEntry("A", ["m.yaml"], ["--model.init_args.predictor", "inputs/pred.pt"])], "inputs/gt.csv",
                  "out", [0], 1, None, [], [], [], "m.yaml", None, 0, [1], None, "accuracy", "cifar10")
    entry = study.entries[0]
    argv = study.argv(entry, 0, "fit")
    assert argv[argv.index("--model.init_args.predictor") + 1] == str(tmp_path / "inputs/pred.pt")
    resolved = yaml.safe_load(Path(argv[2]).read_text())
    assert Path(argv[2]).is_absolute() and Path(argv[2]).parent == tmp_path / "out/A/seed0/configs"
    assert resolved["model"]["init_args"]["landmark"]["init_args"]["ground_truth"] == str(tmp_path / "inputs/gt.csv")
    assert resolved["trainer"]["default_root_dir"] == "runs/old"
    assert resolved["model"]["init_args"]["accelerator"] == "cpu"
    settings = study.settings(entry, 0)
    assert settings["fit"][:3] == ["fit", "-c", "m.yaml"] and "inputs/pred.pt" in settings["fit"]  # as written
    digest = settings["files"]["inputs/pred.pt"]
    (tmp_path / "inputs/pred.pt").write_bytes(b"other weights")  # a retrained predictor makes the run stale
    assert study.settings(entry, 0)["files"]["inputs/pred.pt"] != digest
    assert set(settings["files"]) == {"m.yaml", "inputs/gt.csv", "inputs/pred.pt"}


def test_bad_studies_are_refused(tmp_path: Path) -> None:
    entry = StudyEntry("A", ["a.yaml"])
    with pytest.raises(ValueError, match="distinct names"):
        compare([entry, StudyEntry("A", ["b.yaml"])], "gt.csv", str(tmp_path), max_epochs=1)
    with pytest.raises(ValueError, match="max_epochs and/or max_steps"):
        compare([entry], "gt.csv", str(tmp_path))
    with pytest.raises(ValueError, match=r"sets --trainer\.max_epochs"):
        compare([StudyEntry("B", ["b.yaml"], ["--trainer.max_epochs=3"])], "gt.csv", str(tmp_path), max_epochs=1)
    with pytest.raises(ValueError, match="names a folder"):
        StudyEntry("a/b", ["a.yaml"])


def test_markdown_shows_mean_and_spread() -> None:
    rows = [{"method": "M", "seeds": 2, "kendall_tau": 0.5, "kendall_tau_std": 0.1},
            {"method": "params proxy", "kendall_tau": 0.25}]
    md = markdown_table(rows, "max_epochs=3", with_variance=False)
    assert "| M | 2 | 0.500 ± 0.100 |" in md and "| params proxy | - | 0.250 |" in md


def test_read_ranking_csv_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("arch,accuracy\n|a|,1\n")
    with pytest.raises(ValueError, match="not a per-arch ranking CSV"):
        read_ranking_csv(tmp_path / "x.csv")


@pytest.mark.parametrize(("study_file", "expected"), [
    ("chain_fashion_mnist.yaml", {"PC-NAS": "PCNAS", "ReducedSharing-g4": "ReducedSharing"}),
    ("reduced_sharing_deeper_insights.yaml", {"g64": "ReducedSharing", "k0": "ReducedSharing"}),
    ("nb201_fashion_mnist.yaml", {"PC-NAS": "PCNAS", "DC-NAS": "DCNAS", "WPNAS": "WPNAS"}),
    ("wpnas_ablation_deeper_insights.yaml", {"SPOS": "LandmarkSPOS", "+landmark": "LandmarkSPOS", "+PS": "WPNAS",
                                             "+predictor": "WPNAS", "+WWS": "WPNAS"}),
])
def test_shipped_studies_build_every_run(study_file: str, expected: dict[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shipped study's command lines build the method they name (those with overrides are built), on the
    benchmark's space and data, at the study's cost (nothing trains)."""
    from jsonargparse import auto_cli

    from nas_lightning.cli import NASLightningCLI

    monkeypatch.chdir(REPO)
    runs = auto_cli(compare, args=["--config", f"configs/compare/{study_file}", "--dry_run", "true"],
                    as_positional=False)
    study = yaml.safe_load((REPO / "configs/compare" / study_file).read_text())
    assert {r["entry"] for r in runs} == {e["name"] for e in study["entries"]}
    for run in runs:
        if run["entry"] not in expected or run["seed"] != study["seeds"][-1]:
            continue
        cli = NASLightningCLI([*run["fit"][1:], "--trainer.logger=false"], run=False)
        assert type(cli.model).__name__ == expected[run["entry"]]
        assert cli.model.seed == study["seeds"][-1] and cli.trainer.max_epochs == study["max_epochs"]
        if study_file.startswith("chain"):
            assert cli.model.space.num_archs == 64 and cli.datamodule.image_size == 28
            if run["entry"] == "PC-NAS":  # 4 + 3 layers x 2 = the study's 10 epochs
                shrink = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PoolShrinking")
                assert (shrink.warmup_epochs, shrink.interval_epochs) == (4, 2)
        elif study_file.startswith("nb201"):  # the chain study's method configs on NAS-Bench-201
            assert type(cli.model.space).__name__ == "NB201Space" and cli.model.space.num_archs == 15625
            assert cli.datamodule.image_size == 28
            if run["entry"] == "PC-NAS":  # 4 + 6 edges x 1 = the study's 10 epochs, under 8 MFLOPs
                shrink = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PoolShrinking")
                assert (shrink.warmup_epochs, shrink.interval_epochs) == (4, 1)
                assert cli.model.sampler.limit.max_latency == 8.0
            if run["entry"] == "WPNAS":  # its landmarks come from the benchmark's GT
                assert cli.model.landmark.ground_truth.endswith("nb201_fashion_mnist.csv")
        elif study_file.startswith("wpnas"):  # cumulative: each row adds one piece to the one before
            rows = ["SPOS", "+landmark", "+PS", "+predictor", "+WWS"]
            row = rows.index(run["entry"])
            assert (cli.model.landmark is not None) == (row >= 1) and cli.datamodule.image_size == 10
            if row >= 2:
                assert (cli.model.reward_fn.beta1 > 0) == (row >= 3) and (cli.model.hypernet is not None) == (row == 4)
        else:
            groups = {"g64": 64, "k0": 1}[run["entry"]]
            assert cli.model.picker.groups == groups and cli.datamodule.image_size == 10
            assert cli.model.picker.prefix == (0 if run["entry"] == "k0" else None)


def test_method_row_takes_the_ranking_variance_across_seeds(tmp_path: Path) -> None:
    """Two seeds' per-arch CSVs through ``nas-lightning ranking-variance``: the row's tau between seeds is scipy's
    tau between the two runs' accuracies, and their figures' mean ± sample std are numpy's."""
    from nas_lightning.commands.ranking_variance import ranking_variance_command
    from nas_lightning.metrics.study_table import method_row, run_figures

    rng = np.random.default_rng(0)
    gt = np.linspace(60, 80, 10)
    runs, paths = [], []
    for seed in range(2):
        acc = gt + rng.normal(0, 5, 10)
        rows = [{"arch": f"|op{i}|", "gt_accuracy": float(gt[i]), "inherited_accuracy": float(acc[i]),
                 "params": 100 + i % 3, "flops": 200 + i % 3} for i in np.argsort(-acc)]
        path = tmp_path / f"s{seed}" / "ranking_validate_epoch0.csv"
        path.parent.mkdir()
        path.write_text("arch,gt_accuracy,inherited_accuracy,params,flops\n" + "".join(
            f"{r['arch']},{r['gt_accuracy']},{r['inherited_accuracy']},{r['params']},{r['flops']}\n" for r in rows))
        runs.append(run_figures(read_ranking_csv(path)))
        paths.append(f"seed{seed}={path}")
    variance = ranking_variance_command(paths, output_dir=str(tmp_path / "v"), top_k=3, stage="validate").summary
    row = method_row("M", runs, variance)
    a, b = ({r["arch"]: float(r["inherited_accuracy"]) for r in read_csv(Path(p.split("=")[1]))} for p in paths)
    archs = sorted(a)
    assert row["seed_tau"] == pytest.approx(kendalltau([a[x] for x in archs], [b[x] for x in archs]).statistic)
    taus = [r["kendall_tau"] for r in runs]
    assert (row["kendall_tau"], row["kendall_tau_std"]) == pytest.approx((np.mean(taus), np.std(taus, ddof=1)))
    assert row["top1_differs"] == float(max(a, key=a.get) != max(b, key=b.get))
