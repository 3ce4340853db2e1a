"""The measured latency lookup table: composition by hand, save/load, metadata checks, end-to-end agreement."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typing_extensions import override

import nas_lightning.latency.table as table_module
import nas_lightning.spaces.base as space_base
from nas_lightning.cli import main
from nas_lightning.commands.measure_latency import latency_range
from nas_lightning.latency import FlopsProxy
from nas_lightning.latency.table import LatencyTable, LatencyTableMismatch, measure_latency
from nas_lightning.spaces import ChainSpace, DartsSpace, NB201Space
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import OpSite
from nas_lightning.spaces.darts import DARTS_PRIMITIVES
from nas_lightning.spaces.mobilenet import MobileNetSpace


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # one intra-op thread: the "thread" timer needs it, and two threads spin on a loaded 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**kwargs: object) -> MobileNetSpace:
    args = {"width_mult": 0.25, "num_classes": 5, "input_size": 16, "depths": [2, 1, 1, 1, 1, 1]} | kwargs
    return MobileNetSpace(**args)  # type: ignore[arg-type]


def test_latency_is_the_sum_of_the_chosen_entries_and_the_fixed_parts(tmp_path: Path) -> None:
    space = tiny()
    # a hand-made table: entry of op number i at layer d is 100 * d + i, stem 0.5, head 0.25
    layers = [{op: 100.0 * d + i for i, op in enumerate(dec.choices)} for d, dec in enumerate(space.decisions)]
    table = {"metadata": {"space": space.config(), "batch_size": 4, "device_type": "cpu", "timer": "wall"},
             "fixed": {"stem": 0.5, "head": 0.25}, "layers": layers}
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(table))
    model = LatencyTable(space, path=str(path), batch_size=4)
    arch = space.decode("MBConv_6_3-Identity|MBConv_1_3|MBConv_1_7|MBConv_3_5|MBConv_6_7|MBConv_1_5")
    assert arch.indices == (2, 9, 0, 6, 4, 8, 3)  # positions in MOBILENET_SMALL_OPS (Table 4 order)
    assert model(arch) == pytest.approx(0.75 + 2 + 109 + 200 + 306 + 404 + 508 + 603)
    archs = space.sample_many(20, torch.Generator().manual_seed(0))
    batched = model.batch(space.to_tensor(archs))
    assert batched.tolist() == pytest.approx([model(a) for a in archs])
    assert LatencyTable.from_dict(space, table)(arch) == model(arch)


def test_measure_save_and_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = tiny()
    path = tmp_path / "sub" / "table.json"
    measured = LatencyTable(space, path=str(path), batch_size=2, repeats=3, warmup=1)
    stored = json.loads(path.read_text())
    meta = stored["metadata"]
    assert meta["batch_size"] == 2 and meta["device_type"] == "cpu" and meta["torch"] == torch.__version__
    assert meta["input_shape"] == [3, 16, 16] and meta["space"] == space.config() and meta["repeats"] == 3
    assert [set(layer) for layer in stored["layers"]] == [set(d.choices) for d in space.decisions]
    assert set(stored["fixed"]) == {"stem", "head"}
    assert all(v > 0 for layer in stored["layers"] for v in layer.values())
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, no leftovers

    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("an existing table must be loaded, not measured again")

    monkeypatch.setattr(table_module, "measure_table", no_measuring)
    loaded = LatencyTable(space, path=str(path), batch_size=2)
    for arch in space.sample_many(10, torch.Generator().manual_seed(1)):
        assert loaded(arch) == measured(arch)


def test_a_table_for_another_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    LatencyTable(tiny(), path=str(path), batch_size=2, repeats=1, warmup=0)
    with pytest.raises(LatencyTableMismatch, match=r"width_mult=0\.25 \(space has 0\.5\)"):
        LatencyTable(tiny(width_mult=0.5), path=str(path), batch_size=2)
    with pytest.raises(LatencyTableMismatch, match=r"depths=\[2, 1, 1, 1, 1, 1\] \(space has \[1, 1, 1, 1, 1, 1\]\)"):
        LatencyTable(tiny(depths=[1, 1, 1, 1, 1, 1]), path=str(path), batch_size=2)
    with pytest.raises(LatencyTableMismatch, match=r"batch_size=2 \(asked for 16\)"):
        LatencyTable(tiny(), path=str(path), batch_size=16)
    with pytest.raises(LatencyTableMismatch, match="variant"):
        LatencyTable.from_dict(tiny(variant="large"), json.loads(path.read_text()))


def test_thread_timer_needs_one_thread() -> None:
    torch.set_num_threads(2)
    with pytest.raises(ValueError, match="set_num_threads"):
        LatencyTable(tiny(), timer="thread", repeats=1, warmup=0)


def test_table_predicts_end_to_end_latency() -> None:
    """The sum of isolated entries is within 25% of the stand-alone net's measured latency.

    Timed as CPU time of the one thread (``timer="thread"``): the test machine is shared, and on it the
    wall clock of a whole-network run includes the time other processes hold the core, which the short
    table entries mostly escape. Summed over five archs; measured again if the first try is off (load
    bursts), but every try compares a fresh table with fresh end-to-end timings.
    """
    space = MobileNetSpace(width_mult=0.5, num_classes=10, input_size=32, depths=[1, 1, 1, 1, 1, 1])
    archs = space.sample_many(5, torch.Generator().manual_seed(0))
    nets = [space.build_network(a) for a in archs]
    ratios = []
    for _ in range(3):
        table = LatencyTable(space, batch_size=8, repeats=9, warmup=2, timer="thread")
        predicted = sum(table(a) for a in archs)
        measured = sum(measure_latency(n, space.input_shape, 8, repeats=9, warmup=2, timer="thread") for n in nets)
        ratios.append(predicted / measured)
        if abs(ratios[-1] - 1) < 0.25:
            break
    assert abs(ratios[-1] - 1) < 0.25, f"table / end-to-end latency ratios {ratios}"


def test_measure_latency_command_writes_a_table_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "table.json"
    args = ["measure-latency", "--space", "nas_lightning.spaces.MobileNetSpace", "--space.width_mult", "0.25",
            "--space.num_classes", "5", "--space.input_size", "16", "--space.depths", "[2, 1, 1, 1, 1, 1]",
            "--output", str(out), "--repeats", "1", "--warmup", "0", "--batch_size", "2"]
    main(args)
    table = LatencyTable.load(tiny(), out)
    fastest, slowest = latency_range(table)
    printed = capsys.readouterr().out
    assert f"archs from {fastest:.3f} to {slowest:.3f} ms" in printed and 0 < fastest < slowest
    archs = [tiny().sample(torch.Generator().manual_seed(i)) for i in range(20)]
    assert all(fastest - 1e-9 <= table(a) <= slowest + 1e-9 for a in archs)
    assert table.metadata["batch_size"] == 2
    with pytest.raises(FileExistsError, match="--overwrite true"):
        main(args)
    with pytest.raises(LatencyTableMismatch, match="width_mult"):
        LatencyTable.load(tiny(width_mult=0.5), out)


# --- FLOPs proxy: the additive cost table ---------------------------------------------------------------------
def test_flops_proxy_looks_fresh_archs_up_without_building_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """PC-NAS asks the limit about S=900 fresh completions per candidate: after the first call (which computes the
    cost table) FlopsProxy builds no network, and it gives exactly what counting each network gives."""
    space = tiny(variant="large")
    archs = space.sample_many(40, torch.Generator().manual_seed(0))
    counted = [space.count_cost(a)[1] / 1e6 for a in archs]
    model = FlopsProxy(space)
    model(space.sample(torch.Generator().manual_seed(1)))

    def no_network(arch: Arch) -> None:
        raise AssertionError(f"FlopsProxy built the network of {arch.text}")

    monkeypatch.setattr(space, "build_network", no_network)
    assert [model(a) for a in archs] == counted


def test_nb201_ops_on_zero_nodes_still_cost() -> None:
    """Node 1 of these cells is zero (its only input is ``none``); the network still runs the conv that reads it,
    so the table (an entry per edge, whatever the node) matches the count, which is not that of the isomorphism
    class's representative."""
    space = NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)
    table = space.cost_table()
    assert table is not None
    conv = space.decode("|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    dead = space.decode("|none~0|+|none~0|none~1|+|none~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    for arch in (conv, dead, space.canonical(conv)):
        assert table(arch.indices) == space.count_cost(arch) == space.cost(arch)
    assert space.flops(conv) > space.flops(dead) and space.params(conv) > space.params(dead)
    assert space.canonical(conv) == space.canonical(dead)


def test_darts_cost_is_not_additive_so_it_has_no_table() -> None:
    """In a reduction cell, node 3's second edge reads node 1 (stride 2) or node 2 (stride 1), and a
    ``skip_connect`` there is a ``FactorizedReduce`` or nothing: what the parents decision adds depends on the op
    decision (an interaction), so no per-decision table can be exact."""
    space = DartsSpace(C=4, layers=3, num_classes=5, in_channels=1, input_size=8)
    assert space.cost_table() is None
    names = [d.name for d in space.decisions]
    pairs = space.decisions[names.index("reduce.3.parents")].choices

    def arch(op_b: str, parents: str) -> Arch:
        indices = [0] * space.num_decisions
        indices[names.index("reduce.3.op_b")] = DARTS_PRIMITIVES.index(op_b)
        indices[names.index("reduce.3.parents")] = pairs.index(parents)
        return space.arch(indices)

    def parents_effect(op_b: str) -> tuple[int, int]:
        (p1, f1), (p2, f2) = space.cost(arch(op_b, "0,1")), space.cost(arch(op_b, "0,2"))
        return p1 - p2, f1 - f2

    assert parents_effect("none") == (0, 0)
    params, flops = parents_effect("skip_connect")
    assert params > 0 and flops > 0
    assert space.cost(arch("skip_connect", "0,1")) == space.count_cost(arch("skip_connect", "0,1"))


def test_a_cost_table_that_does_not_match_the_network_is_refused() -> None:
    class StemStrideForgotten(ChainSpace):
        @override
        def op_sites(self, decision: int) -> list[OpSite]:
            return [OpSite(self.C, self.C, 1, (self.C, self.input_size, self.input_size))]

    space = StemStrideForgotten(num_layers=2, C=4, num_classes=5, in_channels=1, input_size=8, stem_stride=2)
    with pytest.raises(RuntimeError, match=r"StemStrideForgotten\.op_sites does not describe its network"):
        space.cost_table()


def test_cost_cache_of_a_table_space_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """PC-NAS draws millions of completions; their costs are cheap to look up again, so few are kept."""
    monkeypatch.setattr(space_base, "TABLE_COST_CACHE_SIZE", 8)
    space = tiny()
    for arch in space.sample_many(30, torch.Generator().manual_seed(0)):
        assert space.cost(arch) is space.cost(arch)
        assert len(space._cost_cache) <= 8
