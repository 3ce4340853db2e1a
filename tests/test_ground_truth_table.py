"""Ground-truth tables: CSV/JSON loading, saving, errors and coverage."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from scipy import stats

from nas_lightning.metrics import GroundTruth, check_coverage, load_ground_truth, save_ground_truth
from nas_lightning.spaces import ChainSpace, NB201Space

SPACE = ChainSpace()


def _archs(n: int = 6):
    return SPACE.sample_many(n, torch.Generator().manual_seed(0))


def _distinct_archs(n: int):
    return list(dict.fromkeys(_archs(3 * n)))[:n]


def test_csv_wide_with_seed_columns(tmp_path: Path) -> None:
    a, b, c = _distinct_archs(3)
    p = tmp_path / "gt.csv"
    p.write_text(
        "arch,accuracy,accuracy_seed0,accuracy_seed1,params,flops\n"
        f"{a},0.5,0.4,0.6,10,20\n"
        f"{b},0.7,0.7,,11,21\n"  # one seed missing
        f"{c},0.9,,,12,22\n"
    )
    gt = load_ground_truth(p, SPACE)
    assert gt.archs == [a, b, c] and len(gt) == 3
    assert gt.accuracy == {a: 0.5, b: 0.7, c: 0.9}
    assert gt.per_seed == {a: [0.4, 0.6], b: [0.7], c: []}
    assert gt.source == str(p)


def test_csv_seed_columns_only_and_other_metric(tmp_path: Path) -> None:
    a, b = _distinct_archs(2)
    p = tmp_path / "gt.csv"
    p.write_text(f"arch,top1_seed1,top1_seed0\n{a},0.6,0.2\n{b},0.3,0.1\n")
    gt = load_ground_truth(p, SPACE, metric="top1")
    assert gt.per_seed[a] == [0.2, 0.6]  # ordered by seed number
    assert gt.accuracy[a] == pytest.approx(0.4) and gt.accuracy[b] == pytest.approx(0.2)


def test_csv_long_format_averages_seeds(tmp_path: Path) -> None:
    a, b = _distinct_archs(2)
    p = tmp_path / "long.csv"
    p.write_text(f"arch,seed,accuracy\n{a},1,0.6\n{b},0,0.3\n{a},0,0.2\n{b},1,0.5\n{a},2,0.7\n")
    gt = load_ground_truth(p, SPACE)
    assert gt.accuracy[a] == pytest.approx(0.5) and gt.accuracy[b] == pytest.approx(0.4)
    assert gt.per_seed[a] == [0.2, 0.6, 0.7] and gt.per_seed[b] == [0.3, 0.5]
    p.write_text(f"arch,seed,accuracy\n{a},0,0.6\n{a},0,0.2\n")
    with pytest.raises(ValueError, match="seed '0' twice"):
        load_ground_truth(p, SPACE)


def test_csv_duplicate_arch_in_wide_format(tmp_path: Path) -> None:
    a, b = _distinct_archs(2)
    p = tmp_path / "dup.csv"
    p.write_text(f"arch,accuracy\n{a},0.5\n{b},0.6\n{a},0.7\n")
    with pytest.raises(ValueError, match=r"line 4.*appears twice") as e:
        load_ground_truth(p, SPACE)
    assert str(a) in str(e.value)


def test_json_forms(tmp_path: Path) -> None:
    a, b = _distinct_archs(2)
    p = tmp_path / "flat.json"
    p.write_text(json.dumps({str(a): 0.5, str(b): 0.25}))
    gt = load_ground_truth(p, SPACE)
    assert gt.accuracy == {a: 0.5, b: 0.25} and gt.per_seed == {a: [], b: []}
    p.write_text(json.dumps({str(a): [0.5, 0.7], str(b): [0.1, 0.2, 0.3]}))
    gt = load_ground_truth(p, SPACE)
    assert gt.accuracy[a] == pytest.approx(0.6) and gt.accuracy[b] == pytest.approx(0.2)
    assert gt.per_seed[b] == [0.1, 0.2, 0.3]
    p.write_text(json.dumps({"archs": [{"arch": str(a), "accuracy": 0.9, "per_seed": [0.8, 1.0]},
                                       {"arch": str(b), "accuracy": 0.1}]}))
    gt = load_ground_truth(p, SPACE)
    assert gt.accuracy == {a: 0.9, b: 0.1} and gt.per_seed == {a: [0.8, 1.0], b: []}


def _table(with_seeds: bool) -> GroundTruth:
    archs = _distinct_archs(5)
    per_seed = {a: ([0.1 * i + 0.013, 0.1 * i + 0.021, 1 / (i + 3)] if with_seeds else [])
                for i, a in enumerate(archs)}
    acc = {a: (sum(s) / len(s) if s else 1 / (i + 7)) for i, (a, s) in enumerate(per_seed.items())}
    return GroundTruth(acc, per_seed, "test")


@pytest.mark.parametrize("suffix", [".csv", ".json"])
@pytest.mark.parametrize("with_seeds", [True, False])
def test_round_trip(tmp_path: Path, suffix: str, with_seeds: bool) -> None:
    gt = _table(with_seeds)
    path = tmp_path / f"gt{suffix}"
    save_ground_truth(path, gt)
    back = load_ground_truth(path, SPACE)
    assert back.archs == gt.archs
    assert back.accuracy == gt.accuracy  # exact floats
    assert back.per_seed == gt.per_seed
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_save_with_costs(tmp_path: Path) -> None:
    gt = _table(True).restrict(_distinct_archs(5)[:2])
    path = tmp_path / "gt.csv"
    save_ground_truth(path, gt, space=SPACE)
    comment, *table = path.read_text().splitlines()
    assert comment == f"# {gt.source}"  # how the table was made, above it
    rows = list(csv.DictReader(table))
    assert list(rows[0]) == ["arch", "accuracy", "accuracy_seed0", "accuracy_seed1", "accuracy_seed2",
                             "params", "flops"]
    for row, a in zip(rows, gt.archs, strict=True):
        assert (int(row["params"]), int(row["flops"])) == SPACE.cost(a)
    assert load_ground_truth(path, SPACE).accuracy == gt.accuracy
    save_ground_truth(tmp_path / "gt.json", gt, space=SPACE)
    entry = json.loads((tmp_path / "gt.json").read_text())["archs"][0]
    assert [entry["params"], entry["flops"]] == list(SPACE.cost(gt.archs[0]))


def test_unknown_op_names_file_row_and_op(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("arch,accuracy\n|nor_conv_3x3|skip_connect|nor_conv_1x1|avg_pool_3x3|,0.5\n"
                 "|nor_conv_3x3|bogus_op|nor_conv_1x1|avg_pool_3x3|,0.6\n")
    with pytest.raises(ValueError, match="bogus_op") as e:
        load_ground_truth(p, SPACE)
    assert str(p) in str(e.value) and "line 3" in str(e.value)
    j = tmp_path / "bad.json"
    j.write_text(json.dumps({"|nor_conv_3x3|bogus_op|nor_conv_1x1|avg_pool_3x3|": 0.5}))
    with pytest.raises(ValueError, match="bogus_op") as e:
        load_ground_truth(j, SPACE)
    assert str(j) in str(e.value)


def test_bad_values_and_files(tmp_path: Path) -> None:
    (a,) = _distinct_archs(1)
    p = tmp_path / "gt.csv"
    p.write_text(f"arch,accuracy\n{a},abc\n")
    with pytest.raises(ValueError, match=r"line 2.*'abc'"):
        load_ground_truth(p, SPACE)
    p.write_text("arch,accuracy\n")
    with pytest.raises(ValueError, match="no archs"):
        load_ground_truth(p, SPACE)
    p.write_text(f"name,accuracy\n{a},0.5\n")
    with pytest.raises(ValueError, match="header"):
        load_ground_truth(p, SPACE)
    j = tmp_path / "gt.json"
    j.write_text(json.dumps({str(a): "high"}))
    with pytest.raises(ValueError, match="high"):
        load_ground_truth(j, SPACE)
    j.write_text("{}")
    with pytest.raises(ValueError, match="no archs"):
        load_ground_truth(j, SPACE)
    missing = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_ground_truth(missing, SPACE)


def test_nats_file_without_package(tmp_path: Path) -> None:
    try:
        import nats_bench  # noqa: F401
    except ImportError:
        p = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
        p.mkdir()
        with pytest.raises(ImportError, match="pip install nats_bench"):
            load_ground_truth(p, SPACE)
    else:
        pytest.skip("nats_bench is installed")


def test_coverage(tmp_path: Path) -> None:
    archs = _distinct_archs(6)
    gt = GroundTruth({a: float(i) for i, a in enumerate(archs[:3])}, {}, "x")
    assert check_coverage(gt, archs[1:5], "x.csv") == archs[1:3]
    with pytest.raises(ValueError, match=r"ground truth x\.csv covers none of the 3 archs") as e:
        check_coverage(gt, archs[3:], "x.csv")
    assert "nas-lightning ground-truth" in str(e.value) and str(archs[3]) in str(e.value)


def test_restrict_and_seed_to_seed_tau() -> None:
    archs = _distinct_archs(6)
    seeds = [[0.1, 0.3, 0.2], [0.4, 0.2, 0.5], [0.3, 0.35, 0.1], [0.9, 0.8, 0.7], [0.5, 0.6, 0.6], [0.2]]
    per_seed = dict(zip(archs, seeds, strict=True))
    gt = GroundTruth({a: sum(s) / len(s) for a, s in per_seed.items()}, per_seed, "x")
    cols = list(zip(*seeds[:5], strict=True))  # the arch with a single seed is left out
    expected = sum(stats.kendalltau(cols[i], cols[j]).statistic for i, j in [(0, 1), (0, 2), (1, 2)]) / 3
    assert gt.seed_to_seed_tau() == pytest.approx(expected, abs=1e-6)
    sub = gt.restrict([archs[4], archs[0], archs[0]])
    assert sub.archs == [archs[4], archs[0]] and sub.per_seed[archs[0]] == seeds[0]
    assert math.isnan(GroundTruth({archs[0]: 1.0, archs[1]: 2.0}, {}, "x").seed_to_seed_tau())


def test_nb201_strings(tmp_path: Path) -> None:
    space = NB201Space()
    texts = [
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
        "|none~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|",
    ]
    p = tmp_path / "nb201.csv"
    p.write_text("arch,accuracy\n" + "".join(f"{t},{70 + i}\n" for i, t in enumerate(texts)))
    gt = load_ground_truth(p, space)
    assert [str(a) for a in gt.archs] == texts
    assert gt.accuracy[space.decode(texts[1])] == 71.0


def test_the_shipped_ground_truth_files_load_for_their_spaces() -> None:
    """configs/ground_truth/results/ holds GT made by `nas-lightning ground-truth`: each loads against its config's
    space and has the figures its README states."""
    from pathlib import Path

    from nas_lightning.metrics.ground_truth import load_ground_truth
    from nas_lightning.spaces import ChainSpace, DeeperInsightsSpace, NB201Space

    results = Path(__file__).parents[1] / "configs" / "ground_truth" / "results"
    chain = ChainSpace(num_layers=3, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect", "avg_pool_3x3"), C=16,
                       num_classes=10, in_channels=1, input_size=28)
    deeper = DeeperInsightsSpace(num_classes=10, in_channels=1, input_size=10)
    nb201 = NB201Space(C=8, N=1, num_classes=10, in_channels=1, input_size=28)
    for name, space, n, tau in (("chain_fashion_mnist.csv", chain, 32, 0.617),
                                ("chain_fashion_mnist_all.csv", chain, 64, 0.509),
                                ("deeper_insights_fashion_mnist.csv", deeper, 64, 0.358),
                                ("nb201_fashion_mnist.csv", nb201, 32, 0.345)):
        gt = load_ground_truth(str(results / name), space)
        assert len(gt.archs) == n and round(gt.seed_to_seed_tau(), 3) == tau
