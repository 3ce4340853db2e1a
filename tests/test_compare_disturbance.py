"""``nas-lightning compare-disturbance``: per-run reduction and per-group mean and std, by hand."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pytest

from nas_lightning.cli import main
from nas_lightning.commands.compare_disturbance import compare_disturbance

HEADER = "epoch,global_step,acc_mean,performance_change,ktau,gt_tau\n"


def write_run(root: Path, rows: list[str]) -> Path:
    path = root / "disturbance" / "disturbance_metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text(HEADER + "".join(r + "\n" for r in rows))
    (root.parent / f"{root.name}.log").write_text("a log beside the run directory\n")
    return path


def test_groups_reduce_each_run_then_average_over_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "a_s0", ["0,10,20.0,nan,nan,0.1", "1,20,30.0,4.0,0.5,0.2", "2,30,40.0,2.0,0.7,0.3"])
    write_run(tmp_path / "a_s1", ["0,10,22.0,nan,nan,0.0", "1,20,34.0,6.0,0.1,0.4", "2,30,44.0,8.0,0.3,0.5"])
    write_run(tmp_path / "b", ["0,10,50.0,nan,nan,0.9", "1,20,60.0,1.0,0.9,0.8"])
    out = tmp_path / "table.csv"
    main(["compare-disturbance", "--runs", f"[A={tmp_path}/a_s*, B={tmp_path}/b/disturbance/disturbance_metrics.csv]",
          "--from_epoch", "1", "--output", str(out)])
    table = {row["label"]: row for row in csv.DictReader(out.open())}
    a, b = table["A"], table["B"]
    assert int(a["runs"]) == 2 and int(b["runs"]) == 1
    # Run a_s0: change (4+2)/2 = 3, KTau 0.6; run a_s1: change 7, KTau 0.2. Last epoch: acc 40 and 44, GT-Tau .3, .5.
    assert float(a["performance_change"]) == pytest.approx(5.0)
    assert float(a["performance_change_std"]) == pytest.approx(statistics.stdev([3.0, 7.0]))
    assert float(a["ktau"]) == pytest.approx(0.4) and float(a["acc_mean"]) == pytest.approx(42.0)
    assert float(a["gt_tau"]) == pytest.approx(0.4) and float(a["gt_tau_std"]) == pytest.approx(math.sqrt(0.02))
    assert float(b["performance_change"]) == 1.0 and float(b["gt_tau_std"]) == 0.0
    assert "| A | 2 | 42.000 ± 2.828 | 5.000 ± 2.828 |" in capsys.readouterr().out


def test_epoch_window_skips_the_first_epochs(tmp_path: Path) -> None:
    write_run(tmp_path / "r", ["0,1,10.0,nan,nan,0.0", "1,2,11.0,9.0,0.0,0.0", "2,3,12.0,1.0,1.0,0.0"])
    (row,) = compare_disturbance([f"R={tmp_path}/r"], from_epoch=2)
    assert row["performance_change"] == 1.0 and row["ktau"] == 1.0
    with pytest.raises(ValueError, match="from_epoch=5"):
        compare_disturbance([f"R={tmp_path}/r"], from_epoch=5)


def test_bad_items_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LABEL=GLOB"):
        compare_disturbance(["runs/x"])
    with pytest.raises(FileNotFoundError, match=r"disturbance\.yaml"):
        compare_disturbance([f"X={tmp_path}/nothing*"])


def test_references_stand_beside_gt_tau(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header = "epoch,acc_mean,performance_change,ktau,gt_tau,gt_tau_equal_cost,gt_ceiling,params_tau,flops_tau\n"
    last_rows = {"s0": "1,40.0,2.0,0.5,0.30,0.10,0.55,0.50,0.52", "s1": "1,44.0,4.0,0.7,0.40,0.30,0.55,0.50,0.52"}
    for name, last in last_rows.items():
        path = tmp_path / name / "disturbance_metrics.csv"
        path.parent.mkdir()
        path.write_text(header + "0,30.0,nan,nan,0.2,0.0,0.55,0.50,0.52\n" + last + "\n")
    (row,) = compare_disturbance([f"R={tmp_path}/s*"], from_epoch=1)
    assert row["gt_tau"] == pytest.approx(0.35) and row["gt_tau_equal_cost"] == pytest.approx(0.2)
    assert (row["gt_ceiling"], row["params_tau"], row["flops_tau"]) == pytest.approx((0.55, 0.50, 0.52))
    assert row["gt_ceiling_std"] == 0.0
    printed = capsys.readouterr().out
    assert "| 0.350 ± 0.071 | 0.200 ± 0.141 | 0.550 ± 0.000 | 0.500 ± 0.000 | 0.520 ± 0.000 |" in printed
