"""The arch a method's own search exported, read back from each method's file, and its GT rank by hand."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from nas_lightning.metrics.search_exports import gt_rank, search_result

GT = {"a": 70.0, "b": 80.0, "c": 80.0, "d": 60.0}


@pytest.mark.parametrize(("name", "content"), [
    ("wpnas_arch.json", [{"arch": "a", "log_prob": -1.0, "probs": {}}]),
    ("controller_archs.json", {"argmax": {"arch": "a"}, "top": [{"arch": "b"}]}),
    ("final_pool.json", [{"arch": "a", "potential": 1.0}, {"arch": "b", "potential": 0.5}]),
    ("top_archs.json", [{"arch": "a", "score": 1.0}, {"arch": "b", "score": 0.5}]),
])
def test_each_methods_export_gives_its_arch(tmp_path: Path, name: str, content: object) -> None:
    (tmp_path / "runs/x/logs").mkdir(parents=True)
    (tmp_path / "runs/x/logs" / name).write_text(json.dumps(content))
    found = search_result(tmp_path)
    assert found is not None and found.arch == "a" and found.file.name == name


def test_newest_export_wins_and_none_without_one(tmp_path: Path) -> None:
    assert search_result(tmp_path) is None
    old, new = tmp_path / "v0/top_archs.json", tmp_path / "v1/top_archs.json"
    for path, arch in ((old, "a"), (new, "d")):
        path.parent.mkdir()
        path.write_text(json.dumps([{"arch": arch}]))
    os.utime(old, ns=(1, 1))  # a resumed run's logger writes a newer version folder
    assert search_result(tmp_path).arch == "d"


def test_gt_rank_by_hand_and_a_bad_export(tmp_path: Path) -> None:
    # b and c tie at the top (rank 1 both), then a (3), then d (4)
    assert [gt_rank(a, GT) for a in "abcd"] == [3.0, 1.0, 1.0, 4.0]
    assert math.isnan(gt_rank("z", GT))
    (tmp_path / "wpnas_arch.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match=r"wpnas_arch\.json is not a wpnas_arch\.json export"):
        search_result(tmp_path)
