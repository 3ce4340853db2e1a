"""Atomic writes: files get the mode the umask gives a normal ``open`` (0644 under 022), never mkstemp's 0600,
a failed write leaves the old file and no temporary file behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nas_lightning.utils.atomic import atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text

WRITERS: dict[str, Callable[[Path], Path]] = {
    "bytes": lambda p: atomic_write_bytes(p, b"\x00\x01"),
    "text": lambda p: atomic_write_text(p, "a\n"),
    "json": lambda p: atomic_write_json(p, {"a": [1.0, float("nan")]}),
    "csv": lambda p: atomic_write_csv(p, [{"arch": "x", "score": 1.5}]),
}


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the old one is restored afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("writer", WRITERS, ids=str)
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask022", "umask002", "umask077"])
def test_new_and_replaced_files_get_the_umask_mode(tmp_path: Path, umask: Callable[[int], None], writer: str,
                                                   mask: int, expected: int) -> None:
    umask(mask)
    path = WRITERS[writer](tmp_path / "sub" / f"out.{writer}")
    assert _mode(path) == expected, f"{oct(_mode(path))} != {oct(expected)}"
    path.chmod(0o600)  # a replaced file takes the umask's mode too: the rename brings the new file's mode
    WRITERS[writer](path)
    assert _mode(path) == expected
    assert [p.name for p in path.parent.iterdir()] == [path.name], "temporary file left behind"


def test_content_round_trips(tmp_path: Path) -> None:
    assert atomic_write_bytes(tmp_path / "b", b"\xff\n\r\n").read_bytes() == b"\xff\n\r\n"
    assert atomic_write_text(tmp_path / "t", "\u00e9\n").read_bytes() == "\u00e9\n".encode()
    assert atomic_write_json(tmp_path / "j", {"x": float("inf")}).read_text() == '{\n  "x": null\n}\n'
    assert atomic_write_csv(tmp_path / "c", [{"a": 1, "b": 0.1}]).read_text() == "a,b\n1,0.1\n"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = atomic_write_text(tmp_path / "out.txt", "old\n")

    def crash(src: object, dst: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_the_disturbance_heatmap_gets_the_umask_mode(tmp_path: Path, umask: Callable[[int], None]) -> None:
    import torch

    from nas_lightning.metrics.disturbance import DisturbanceMatrix, save_disturbance_matrix
    from nas_lightning.spaces import ChainSpace

    space = ChainSpace(num_layers=2, C=4, num_classes=3, in_channels=1, input_size=8)
    archs = [space.arch([0, 0]), space.arch([1, 1])]
    matrix = DisturbanceMatrix(archs, torch.tensor([10.0, 20.0]), torch.tensor([[11.0, 12.0], [19.0, 21.0]]))
    umask(0o022)
    csv_path, png_path = save_disturbance_matrix(matrix, tmp_path / "matrix")
    assert (_mode(csv_path), _mode(png_path)) == (0o644, 0o644)
