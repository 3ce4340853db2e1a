"""The predictor file: what ``nas-lightning train-predictor`` writes and the WPNAS search loads (Lin et al.,
section 4, steps 3-4).

One ``torch.save`` dict, readable with ``torch.load(weights_only=True)``::

    {"format": "nas_lightning.predictor", "version": 1,
     "space": {"class": "nas_lightning.spaces.nb201.NB201Space", "decisions": [[name, [choices...]], ...]},
     "kind": "few_shot", "settings": {"encoder": "mlp", "hidden": 64, ...},
     "state_dict": {...},                       # weights, target normalisation, a few-shot support set
     "support": {"archs": [...], "accuracy": [...]},   # few-shot only: the support set, readable
     "training": {...}}                         # how it was trained and its held-out metrics

A predictor encodes archs by their choice indices, so it belongs to its space's class and decision list
(not to C, N or the image size); ``load_predictor`` compares both and names the file when they differ.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from nas_lightning.predictors.predictor import PREDICTORS, ArchPredictor, FewShotPredictor
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_bytes

__all__ = ["PREDICTOR_FORMAT", "PredictorFileError", "load_predictor", "save_predictor", "space_record"]

PREDICTOR_FORMAT = "nas_lightning.predictor"
PREDICTOR_VERSION = 1


class PredictorFileError(ValueError):
    """A predictor file that cannot be read, or that was made for another space or arch format."""


def space_record(space: SearchSpace) -> dict[str, Any]:
    """What a predictor's arch encoding depends on: the space's class and its decision list."""
    return {"class": f"{type(space).__module__}.{type(space).__qualname__}",
            "decisions": [[d.name, list(d.choices)] for d in space.decisions]}


def save_predictor(path: str | os.PathLike[str], predictor: ArchPredictor, kind: str,
                   training: dict[str, Any] | None = None) -> Path:
    """Write ``predictor`` to ``path`` atomically (format in the module docstring)."""
    record: dict[str, Any] = {
        "format": PREDICTOR_FORMAT, "version": PREDICTOR_VERSION, "space": space_record(predictor.space),
        "kind": kind, "settings": dict(predictor.settings),
        "state_dict": {k: v.detach().cpu() for k, v in predictor.state_dict().items()},
        "training": dict(training or {}),
    }
    if isinstance(predictor, FewShotPredictor):
        record["support"] = {"archs": [str(a) for a in predictor.support_archs],
                             "accuracy": predictor.support_accuracy.tolist()}
    buffer = io.BytesIO()
    torch.save(record, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    if saved.get("class") != current["class"]:
        return f"space class {saved.get('class')}, this run's is {current['class']}"
    theirs = {name: choices for name, choices in saved.get("decisions", [])}
    ours = {name: choices for name, choices in current["decisions"]}
    if list(theirs) != list(ours):
        return f"decisions {list(theirs)}, this run's space has {list(ours)}"
    bad = next(name for name in ours if theirs[name] != ours[name])
    return f"choices {theirs[bad]} at decision {bad!r}, this run's space has {ours[bad]}"


def load_predictor(path: str | os.PathLike[str], space: SearchSpace) -> ArchPredictor:
    """The predictor saved at ``path``, on the CPU, in eval mode, for ``space``.

    Raises ``FileNotFoundError`` for a missing file and ``PredictorFileError`` naming the file when it is not a
    predictor file or was made for another space class or decision list (another arch format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictor file {path} does not exist; make one with `nas-lightning train-predictor`")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on a damaged or foreign file
        raise PredictorFileError(f"predictor file {path} cannot be read ({type(error).__name__}): it is truncated, "
                                 "corrupt or not a predictor file; train it again with `nas-lightning "
                                 "train-predictor`") from None
    if not isinstance(record, dict) or record.get("format") != PREDICTOR_FORMAT:
        raise PredictorFileError(f"{path} is not a predictor file written by `nas-lightning train-predictor`")
    if record.get("version") != PREDICTOR_VERSION:
        raise PredictorFileError(f"predictor file {path} has format version {record.get('version')}, this code "
                                 f"reads version {PREDICTOR_VERSION}; train it again")
    current = space_record(space)
    if record.get("space") != current:
        raise PredictorFileError(
            f"predictor file {path} was made for another space or arch format: it has "
            f"{_differences(record.get('space') or {}, current)}. Use a predictor trained on this space's ground "
            "truth (`nas-lightning train-predictor` with the same space), or the space it was made for")
    predictor = PREDICTORS.get(record["kind"])(space, **record["settings"])
    predictor.load_state_dict(record["state_dict"])
    return predictor.eval()
