"""2-process DDP on the CPU (gloo): both ranks train the same archs, and the weights equal those of
one process that accumulates the same per-rank micro-batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_equivalence.py"


def _run(mode: str, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), mode, str(out)], env=env, capture_output=True, text=True,
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
