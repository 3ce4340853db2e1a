"""A ranking run's per-arch table and rank scatter: the ranks (checked against scipy), the PNG written to the ranking
folder in any case, and, with a ``WandbLogger`` (offline: nothing reaches the network), the same rows as a
``wandb.Table`` and the same picture as a ``wandb.Image``, read back from the offline run's own log."""

from __future__ import annotations

import csv
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from scipy import stats

from callbacks import RankingEvaluation
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods import SPOS
from nas_lightning.metrics.ranking_plots import descending_ranks, ranked_rows, write_rank_scatter
from nas_lightning.spaces import ChainSpace
from nas_lightning.utils.wandb_logging import log_table_and_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def offline_records(run_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, data) of each record of an offline W&B run's ``run-<id>.wandb`` log: ``history`` rows and ``config``
    updates as ``{key: value}``, and the ``exit`` record. The log is a LevelDB-style record log (a 7-byte header,
    then 32 KiB blocks of chunks, each with a 7-byte header: CRC, length, type full/first/middle/last) of
    ``wandb.proto.wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    raw, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert raw[:4] == b":W&B", f"{path} is not a W&B run log"
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            which = record.WhichOneof("record_type")
            if which == "history":
                yield which, _history_row(record.history.item)
            elif which == "config":
                yield which, {item.key: json.loads(item.value_json) for item in record.config.update}
            elif which == "exit":
                yield which, {"exit_code": record.exit.exit_code}


def finished_run(run_dir: Path, timeout: float = 60.0) -> list[tuple[str, dict[str, Any]]]:
    """The records of an offline run once its log holds the exit record: W&B's service process may still be
    writing the log when ``finish()`` has returned."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(offline_records(run_dir))
        if any(kind == "exit" for kind, _ in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _history_row(items: Any) -> dict[str, Any]:
    """A history record's items as a dict; a media value (logged as one dict) comes as items with nested keys
    (``("rank/archs", "path")``), put back together here."""
    row: dict[str, Any] = {}
    for item in items:
        *parents, leaf = (item.key,) if item.key else tuple(item.nested_key)
        node = row
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = json.loads(item.value_json)
    return row


def test_descending_ranks_match_scipy_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 6, (40,), generator=gen).double().tolist()  # many ties
    assert descending_ranks(values) == pytest.approx(stats.rankdata([-v for v in values], method="average"))
    assert descending_ranks([3.0, 1.0, 2.0]) == [1.0, 3.0, 2.0]
    with pytest.raises(ValueError, match="nan"):
        descending_ranks([1.0, float("nan")])


def _rows() -> list[dict[str, Any]]:
    # Hand-worked: GT ranks 2, 1, 4, 3; inherited ranks 1, 2, 3, 4 (rows come best inherited first); params
    # 300 > 200 = 200 > 100 gives ranks 1, 2.5, 2.5, 4.
    return [{"arch": "a", "gt_accuracy": 80.0, "inherited_accuracy": 60.0, "params": 200, "flops": 2},
            {"arch": "b", "gt_accuracy": 90.0, "inherited_accuracy": 50.0, "params": 300, "flops": 3},
            {"arch": "c", "gt_accuracy": 60.0, "inherited_accuracy": 40.0, "params": 100, "flops": 1},
            {"arch": "d", "gt_accuracy": 70.0, "inherited_accuracy": 30.0, "params": 200, "flops": 2}]


def test_ranked_rows_and_the_scatter_png(tmp_path: Path) -> None:
    table = ranked_rows(_rows())
    assert [r["gt_rank"] for r in table] == [2, 1, 4, 3]
    assert [r["inherited_rank"] for r in table] == [1, 2, 3, 4]
    assert [r["params_rank"] for r in table] == [2.5, 1, 4, 2.5]
    summary = {"num_archs": 4, "supernet": {"kendall_tau": 0.333}, "proxies": {"params": {"kendall_tau": 0.5}},
               "gt_seed_to_seed_tau": float("nan")}
    path = write_rank_scatter(tmp_path / "scatter.png", _rows(), summary)
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    assert imread(path).shape[:2] == (420, 900)  # two panels side by side, 9 x 4.2 inches at 100 dpi
    with pytest.raises(ValueError, match="at least 2"):
        write_rank_scatter(tmp_path / "one.png", _rows()[:1], summary)


def test_no_wandb_logger_logs_nothing(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    png.write_bytes(PNG_MAGIC)
    assert log_table_and_image([], _rows(), "t", png, "i", step=0) == 0
    assert log_table_and_image([CSVLogger(tmp_path)], _rows(), "t", png, "i", step=0) == 0


def _space() -> ChainSpace:
    return ChainSpace(num_layers=2, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect"), C=8, num_classes=4,
                      in_channels=1, input_size=12)


@pytest.mark.slow
def test_ranking_run_logs_its_table_and_scatter_to_wandb_offline(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    archs = list(_space().enumerate())
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({str(a): [50.0 + 3 * i % 7, 51.0 + i % 5] for i, a in enumerate(archs)}))
    # No output_dir: under a WandbLogger the files go to <save_dir>/<run id>/ranking, a folder per W&B run.
    ranking = RankingEvaluation(str(gt_path), every_n_epochs=1, k=(1, 3))
    logger = WandbLogger(project="nas-lightning-test", save_dir=str(tmp_path), id="rankingtest", log_model=False)
    model = SPOS(_space(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), num_eval_archs=0)
    data = SyntheticDataModule(num_classes=4, in_channels=1, image_size=12, num_train=256, num_test=32,
                               batch_size=32, val_fraction=0.25, noise=0.5)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_train_batches=3, default_root_dir=tmp_path, callbacks=[ranking])
    try:
        trainer.fit(model, datamodule=data)
    finally:
        logger.experiment.finish()

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*-rankingtest")
    records = finished_run(run_dir)
    assert ("exit", {"exit_code": 0}) in records
    logged = [row for kind, row in records if kind == "history" and "rank/archs" in row]
    assert [row["trainer/global_step"] for row in logged] == [3, 6]  # one entry per epoch's evaluation
    for epoch, row in enumerate(logged):
        table, image = row["rank/archs"], row["rank/scatter"]
        assert table["_type"] == "table-file" and image["_type"] == "image-file"
        # The table holds the CSV's rows, in its order, with their three ranks.
        rows = list(csv.DictReader((tmp_path / "rankingtest" / "ranking" / f"ranking_fit_epoch{epoch}.csv").open()))
        written = json.loads((run_dir / "files" / table["path"]).read_text())
        assert written["columns"] == [*rows[0], "gt_rank", "inherited_rank", "params_rank"]
        assert [r[0] for r in written["data"]] == [r["arch"] for r in rows]
        for got, want in zip(written["data"], ranked_rows(rows)):
            assert got[1:5] == pytest.approx([float(want[k]) for k in ("gt_accuracy", "inherited_accuracy",
                                                                        "params", "flops")])
            assert got[5:] == [want["gt_rank"], want["inherited_rank"], want["params_rank"]]
        # The image is the scatter written to the ranking folder, byte for byte.
        scatter = tmp_path / "rankingtest" / "ranking" / f"rank_scatter_fit_epoch{epoch}.png"
        assert (run_dir / "files" / image["path"]).read_bytes() == scatter.read_bytes()
        assert scatter.read_bytes()[:8] == PNG_MAGIC
