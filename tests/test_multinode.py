"""Multi-node DDP on localhost: 2 nodes x 1 process (``Trainer(num_nodes=2, devices=1)``), each process started by
hand with the variables a launcher (torchrun, srun) sets, train PC-NAS with pool shrinking. Both nodes end with
identical weights and search state (the pool and every shrink's potentials), and both equal one process that
accumulates the same micro-batches, two per optimiser step (docs/multinode.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "multinode_pcnas.py"
#: Variables another launcher or scheduler would set, which would make Lightning pick another cluster environment.
FOREIGN = ("SLURM_", "TORCHELASTIC_", "GROUP_RANK", "RANK", "LOCAL_WORLD_SIZE", "OMPI_", "PMI_")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**launch: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    return {**env, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1", **launch}


@pytest.mark.slow
def test_two_nodes_agree_with_each_other_and_with_one_accumulating_process(tmp_path: Path) -> None:
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), "node", str(tmp_path)],
                              env=_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), WORLD_SIZE="2",
                                       LOCAL_RANK="0"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    procs.append(subprocess.Popen([sys.executable, str(SCRIPT), "single", str(tmp_path)], env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [proc.communicate(timeout=900)[0] for proc in procs]  # generous: a loaded CI machine
    finally:
        for proc in procs:
            proc.kill()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]

    n0, n1 = (torch.load(tmp_path / f"node_rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single_rank0.pt")
    # Each process is one node of a 2-node job, found by Lightning's own environment from the variables.
    for rank, node in enumerate((n0, n1)):
        assert node["launch"] == {"num_nodes": 2, "node_rank": rank, "global_rank": rank, "world_size": 2,
                                  "environment": "LightningEnvironment"}
    assert n0["global_step"] == n1["global_step"] == single["global_step"] == 9

    # The same archs: one per step on each node, the same one for both micro-batches of a step in the single run.
    assert n0["archs"] == n1["archs"] and len(set(n0["archs"])) > 1
    assert single["archs"][::2] == n0["archs"] and single["archs"][1::2] == n0["archs"]

    # The search state: the pool after its 3 shrinks, with every shrink's candidates, potentials and survivors.
    history = n0["pool"]["pool"]["history"]
    assert len(history) == 3 and any(len(set(h["potentials"])) > 1 for h in history), "potentials all tied"
    assert n0["pool"] == n1["pool"]
    assert single["pool"]["pool"]["members"] == n0["pool"]["pool"]["members"]
    for h_single, h_node in zip(single["pool"]["pool"]["history"], history, strict=True):
        assert h_single["candidates"] == h_node["candidates"] and h_single["kept"] == h_node["kept"]
        assert h_single["potentials"] == pytest.approx(h_node["potentials"], abs=1e-9)

    moved = [name for name, p in single["params"].items() if not torch.equal(p, single["initial"][name])]
    assert len(moved) > 5, "training did not change the weights, so the comparison would prove nothing"
    for name, p in single["params"].items():
        torch.testing.assert_close(n1["params"][name], n0["params"][name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(n0["params"][name], p, rtol=1e-4, atol=1e-5, msg=name)
