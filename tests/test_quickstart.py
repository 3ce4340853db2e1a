"""The quickstart ranks against a ground truth made for its own space and data, and reports it correctly."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from nas_lightning.metrics.ground_truth import load_ground_truth
from nas_lightning.spaces import ChainSpace

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs/quickstart/spos_chain_fashion_mnist.yaml"
GT_CONFIG = ROOT / "configs/ground_truth/chain_fashion_mnist_all.yaml"
GT_FILE = ROOT / "configs/ground_truth/results/chain_fashion_mnist_all.csv"
sys.path.insert(0, str(ROOT / "scripts"))
from quickstart_report import gt_rank, main, read_rows, report  # noqa: E402


def test_quickstart_trains_on_the_space_and_data_of_its_ground_truth() -> None:
    run, gt = yaml.safe_load(QUICKSTART.read_text()), yaml.safe_load(GT_CONFIG.read_text())
    assert run["model"]["init_args"]["space"] == gt["space"]
    assert run["data"] == gt["data"]  # the same images, the same supernet-val split
    ranking = [c for c in run["trainer"]["callbacks"] if c["class_path"] == "callbacks.RankingEvaluation"]
    assert [c["init_args"]["ground_truth"] for c in ranking] == [str(GT_FILE.relative_to(ROOT))]
    assert ranking[0]["init_args"]["max_archs"] is None  # every arch ranked
    assert str(GT_FILE.relative_to(ROOT)) in (ROOT / "scripts/quickstart.sh").read_text()


def test_shipped_ground_truth_covers_every_arch_with_two_seeds() -> None:
    space = ChainSpace(**yaml.safe_load(GT_CONFIG.read_text())["space"]["init_args"], num_classes=10, in_channels=1,
                       input_size=28)
    gt = load_ground_truth(GT_FILE, space)
    assert sorted(map(str, gt.archs)) == sorted(map(str, space.enumerate()))
    assert all(len(v) == 2 for v in gt.per_seed.values())
    # Its settings equal the 32-arch GT's, whose runs it resumed from: the shared archs agree exactly.
    half_file = ROOT / "configs/ground_truth/results/chain_fashion_mnist.csv"
    half = {r["arch"]: float(r["accuracy"]) for r in read_rows(half_file)}
    assert len(half) == 32 and all(gt.accuracy[space.decode(a)] == acc for a, acc in half.items())


def write_run(tmp: Path) -> tuple[Path, Path]:
    """A hand-made run: 4 archs, params groups {a, b} (100) and {c, d} (200)."""
    archs = {"|a|": (70.0, 60.0, 100), "|b|": (65.0, 62.0, 100), "|c|": (80.0, 58.0, 200), "|d|": (60.0, 55.0, 200)}
    (tmp / "run/ranking").mkdir(parents=True)
    (tmp / "run/search").mkdir()
    with (tmp / "run/ranking/ranking_validate_epoch0.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "gt_accuracy", "inherited_accuracy", "params", "flops"])
        for arch, (gt, inherited, params) in archs.items():
            w.writerow([arch, gt, inherited, params, params * 10])
    proxy = {"kendall_tau": 0.1, "spearman": 0.2, "top1_gt_rank": 1.0}
    summary = {"num_archs": 4, "gt_seed_to_seed_tau": 0.5, "proxies": {"params": proxy, "flops": proxy},
               "supernet": {"kendall_tau": 0.3, "spearman": 0.4, "top1_gt_rank": 3.0}}
    (tmp / "run/ranking/ranking_validate_epoch0.json").write_text(json.dumps(summary))
    (tmp / "run/search/top_archs.json").write_text(json.dumps([{"arch": "|a|", "score": 60.0, "params": 100}]))
    gt_file = tmp / "gt.csv"
    with gt_file.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "accuracy", "accuracy_seed0", "accuracy_seed1"])
        for arch, (gt, _, _) in archs.items():
            w.writerow([arch, gt, gt - 1, gt + 1])
        w.writerow(["|e|", 70.0, 69.0, 71.0])  # ties with |a|: they share rank 2
    return tmp / "run", gt_file


def test_report_by_hand(tmp_path: Path) -> None:
    run, gt_file = write_run(tmp_path)
    text = report(run, gt_file)
    # Equal-params pairs: (a, b): inherited a < b, GT a > b: discordant; (c, d): concordant -> tau 0 over 2 pairs.
    assert "supernet over equal-params pairs         0.000   (2 pairs)" in text
    # |a| (70) behind |c| (80) only, tied with |e|: rank 2 of 5.
    assert "GT accuracy 70.00% (seeds 69.00, 71.00): GT rank 2 of 5" in text
    assert "supernet (inherited weights)             0.300     0.400" in text
    assert "GT seed-to-seed (the ceiling)            0.500" in text
    assert gt_rank("x", {"x": 1.0, "y": 2.0, "z": 2.0}) == 3


def test_report_command_writes_report_txt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, gt_file = write_run(tmp_path)
    main(["--run_dir", str(run), "--ground_truth", str(gt_file)])
    assert capsys.readouterr().out == (run / "report.txt").read_text()
    (run / "search/top_archs.json").unlink()
    with pytest.raises(SystemExit, match=r"top_archs\.json is missing"):
        main(["--run_dir", str(run), "--ground_truth", str(gt_file)])
