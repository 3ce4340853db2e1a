"""2-process DDP on the CPU (gloo): both ranks train the same archs, and the weights equal those of
one process that accumulates the same per-rank micro-batches; an evaluation through the data module sees the
same images on 2 processes as on 1."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_equivalence.py"
EVAL_DATA_SCRIPT = Path(__file__).parent / "scripts" / "ddp_eval_data.py"


def _run(mode: str, out: Path, script: Path = SCRIPT) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), mode, str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_ddp_matches_single_process_accumulation(tmp_path: Path) -> None:
    _run("ddp", tmp_path)
    _run("single", tmp_path)
    r0, r1 = (torch.load(tmp_path / f"ddp_rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single_rank0.pt")

    assert len(r0["archs"]) == 6
    assert r0["archs"] == r1["archs"], "the two ranks trained different archs"
    assert len(set(r0["archs"])) > 1, "the sampler drew one arch for every step"
    # The single process sees two micro-batches per step, with the same arch for both.
    assert single["archs"][::2] == r0["archs"] and single["archs"][1::2] == r0["archs"]

    moved = [n for n, p in single["params"].items() if not torch.equal(p, single["initial"][n])]
    assert len(moved) > 10, "training did not change the weights, so the comparison would prove nothing"
    for name, p in single["params"].items():
        torch.testing.assert_close(r0["params"][name], p, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(r1["params"][name], r0["params"][name], rtol=0, atol=0, msg=name)

    # Both ranks ran the identical evolutionary search, and it equals the single process's search on
    # all the batches (eval-batch BN statistics do not depend on how batches are spread over ranks).
    assert r0["search"] is not None and r0["search"]["scores"]
    assert r0["search"] == r1["search"]
    assert [a for a, _ in r0["search"]["top"]] == [a for a, _ in single["search"]["top"]]
    for (_, s0), (_, s1) in zip(r0["search"]["top"], single["search"]["top"]):
        assert abs(s0 - s1) < 1e-3


@pytest.mark.slow
def test_evaluation_data_does_not_depend_on_the_number_of_processes(tmp_path: Path) -> None:
    """With ``limit_val_batches=3`` each of 2 ranks takes its slice of the same 3 global batches (33 images, not
    3 batches each), BN is recalibrated on the same unsharded train batches, the whole split is counted once
    (no padding duplicates, the last 1-image batch kept) and ``limit_val_batches=0.5`` takes the same 5 global
    batches: per-arch accuracies and the search equal 1 process's."""
    _run("ddp", tmp_path, EVAL_DATA_SCRIPT)
    _run("single", tmp_path, EVAL_DATA_SCRIPT)
    r0, r1 = (torch.load(tmp_path / f"ddp_rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single_rank0.pt")

    assert single["local"] == 33 and r0["local"] + r1["local"] == 33 and min(r0["local"], r1["local"]) > 0
    assert len(single["calibration"]) == 3 and r0["calibration"] == r1["calibration"] == single["calibration"]
    assert len({acc for acc, _ in single["limited"].values()}) > 1, "all archs tie: the comparison would be weak"
    for r in (r0, r1):
        assert r["limited"] == single["limited"]  # exact: (accuracy, image count) per arch
        assert all(n == 33 for _, n in r["limited"].values())
        assert r["whole"] == single["whole"]
        assert all(n == 100 for _, n in r["whole"].values())
        assert r["half"] == single["half"]
        assert all(n == 55 for _, n in r["half"].values())
        assert r["search"] is not None and _without_batch_count(r["search"]) == _without_batch_count(single["search"])


def _without_batch_count(search: dict) -> dict:
    """The search result less the number of validation batches its provenance records (if any): summed over ranks,
    it counts each rank's slices of the same global batches."""
    search = copy.deepcopy(search)
    search.get("provenance", {}).get("evaluation", {}).pop("val_batches", None)
    return search
