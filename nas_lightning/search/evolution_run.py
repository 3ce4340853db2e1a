"""A resumable SPOS evolution (Guo et al., arXiv:1904.00420, Algorithm 1) kept in one directory.

``EvolutionRun`` wraps ``evolution_search`` with its files: the state after every generation goes to
``evolution_state.json`` (so a killed search resumes where it stopped, with the same result as an
uninterrupted one), and the final top archs, best first, to ``top_archs.json``, ready for
``StandaloneModule`` retraining. Under DDP every rank runs the identical search (its scores are summed
over ranks) and only the ``writer`` rank touches the files; a ``broadcast`` hands the writer's saved
state to the other ranks. Needs no Trainer: the ``EvolutionSearch`` callback passes the rank's role,
its broadcast and the inherited-weight score.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas_lightning.search.evolution import EvolutionConfig, EvolutionResult, ScoreFn, evolution_search, export_top_archs
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_json

__all__ = ["EvolutionRun", "format_top_archs"]

STATE_FILE = "evolution_state.json"
TOP_FILE = "top_archs.json"


def format_top_archs(space: SearchSpace, top: list[tuple[Arch, float]]) -> str:
    """The top archs as a table: rank, arch, score (inherited val accuracy), params and FLOPs in millions."""
    width = max(len(str(a)) for a, _ in top)
    lines = [f"{'rank':>4}  {'arch':<{width}}  {'val acc (inherited)':>19}  {'params (M)':>10}  {'FLOPs (M)':>9}"]
    for i, (arch, score) in enumerate(top, start=1):
        params, flops = space.cost(arch)
        lines.append(f"{i:>4}  {arch!s:<{width}}  {score:>19.2f}  {params / 1e6:>10.4f}  {flops / 1e6:>9.2f}")
    return "\n".join(lines)


def _no_log(message: str) -> None:
    del message


class EvolutionRun:
    """One evolution search whose state and result live in ``out``.

    Args:
        out: directory of ``evolution_state.json`` and ``top_archs.json``.
        config: the search settings.
        resume: continue from ``evolution_state.json`` when it exists.
        writer: whether this process writes the files (rank 0 under DDP).
        broadcast: the writer's object on every process (identity with one process).
        log: where progress messages go (e.g. ``rank_zero_info``).
    """

    def __init__(self, out: str | os.PathLike[str], config: EvolutionConfig, resume: bool = True, writer: bool = True,
                 broadcast: Callable[[Any], Any] = lambda obj: obj, log: Callable[[str], None] = _no_log) -> None:
        self.out, self.config, self.resume, self.writer = Path(out), config, resume, writer
        self.broadcast, self.log = broadcast, log

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def saved_state(self) -> dict[str, Any] | None:
        """The state to resume from (the writer reads it, every process gets it), or None."""
        state = None
        if self.writer and self.resume and self.state_path.exists():
            state = json.loads(self.state_path.read_text())
        state = self.broadcast(state)
        if state is not None:
            self.log(f"resuming the evolution from generation {state['generation']} ({self.state_path})")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        if self.writer:
            atomic_write_json(self.state_path, state)

    def search(self, space: SearchSpace, score_fn: ScoreFn, progress: bool = True) -> EvolutionResult:
        """Run (or resume) the search, saving the state after every generation; the writer then exports
        the top archs and logs them."""
        result = evolution_search(space, score_fn, self.config, progress=progress and self.writer,
                                  state=self.saved_state(), on_generation_end=self._save)
        if self.writer:
            path = export_top_archs(self.out / TOP_FILE, result, space)
            best, score = result.best
            self.log(f"\n{format_top_archs(space, result.top)}\n\nbest arch: {best}  "
                     f"(inherited val acc {score:.2f}%, {len(result.scores)} archs evaluated)\nwrote {path}")
        return result
