"""A resumable SPOS evolution (Guo et al., arXiv:1904.00420, Algorithm 1) kept in one directory.

``EvolutionRun`` wraps ``evolution_search`` with its files: the state after every generation goes to
``evolution_state.json`` (so a killed search resumes where it stopped, with the same result as an
uninterrupted one), and the final top archs, best first, to ``top_archs.json``, ready for
``StandaloneModule`` retraining. Under DDP every rank runs the identical search (its scores are summed
over ranks) and only the ``writer`` rank touches the files; a ``broadcast`` hands the writer's saved
state to the other ranks. Needs no Trainer: the ``EvolutionSearch`` callback passes the rank's role,
its broadcast and the inherited-weight score.

A state file belongs to one search, and the rule is to refuse, never to guess: it records the search
settings (the config and the latency model, ``search_settings``) and its provenance (``search_provenance``:
the supernet checkpoint, as its path, global step and a SHA-256 of the supernet's weights; the space and
its arch set; the method and its evaluation settings, e.g. ``bn_recalibration`` and the number of
validation batches and samples). ``search`` resumes a state only when all of these match, except a larger
``generations`` (which continues the search) and the checkpoint's path and step (the weights decide: a
moved file is the same supernet). Any other difference raises ``EvolutionStateMismatch`` naming each
difference, before anything is evaluated: the saved scores would not be this search's, and starting
afresh would silently overwrite the other search's result. To proceed, give this search another output
directory (``output_dir``), or ``resume=False``, which starts afresh (said in the log) and overwrites the
files there. A state that matches resumes where it stopped; a finished one is reported again as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nas_lightning.latency.base import FlopsProxy, LatencyModel
from nas_lightning.search.evolution import (
    EvolutionConfig,
    EvolutionResult,
    EvolutionStateMismatch,
    ScoreFn,
    evolution_search,
    export_top_archs,
    resume_mismatches,
    search_settings,
)
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_json

if TYPE_CHECKING:
    from nas_lightning.methods.supernet_module import SupernetModule

__all__ = ["EvolutionRun", "format_top_archs", "search_provenance", "supernet_provenance", "weights_sha256"]

STATE_FILE = "evolution_state.json"
TOP_FILE = "top_archs.json"
_UNREADABLE = "unreadable"  # key of the state a writer that could not parse the file hands to every rank


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


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of ``module``'s state dict (names, dtypes, shapes and bytes, in order): the same on every
    device and every DDP rank for the same weights. One pass over the weights, cheap beside one evaluation."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def space_signature(space: SearchSpace) -> dict[str, Any]:
    """The space a search runs in: its class, input and classes, and its arch set (each decision's choices)."""
    return {"class": f"{type(space).__module__}.{type(space).__qualname__}", "input_shape": list(space.input_shape),
            "num_classes": space.num_classes, "decisions": {d.name: list(d.choices) for d in space.decisions}}


def search_provenance(space: SearchSpace, supernet: nn.Module, checkpoint: str | os.PathLike[str] | None = None,
                      global_step: int | None = None, evaluation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What an evolution's scores belong to (recorded in its state, compared on resume): the checkpoint (path
    and step describe it, the weights' hash identifies it), the space and the evaluation settings."""
    return {
        "checkpoint": {"path": None if checkpoint is None else str(checkpoint), "global_step": global_step,
                       "weights_sha256": weights_sha256(supernet)},
        "space": space_signature(space),
        "evaluation": dict(evaluation or {}),
    }


def supernet_provenance(module: SupernetModule, checkpoint: str | os.PathLike[str] | None = None,
                        global_step: int | None = None,
                        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """``search_provenance`` of a method's inherited-weight evaluation: the method, its ``bn_recalibration``,
    and the number of validation images it scores on (this rank's slices, summed with ``reduce`` over the
    ranks: the same at any number of processes, unlike a count of per-rank batches)."""
    samples = torch.tensor([sum(len(y) for _, y in module.batches.validation())], dtype=torch.int64,
                           device=module.device)
    if reduce is not None:
        samples = reduce(samples)
    evaluation = {"method": f"{type(module).__module__}.{type(module).__qualname__}",
                  "bn_recalibration": module.bn_recalibration, "val_samples": int(samples[0])}
    return search_provenance(module.space, module.supernet, checkpoint, global_step, evaluation)


class EvolutionRun:
    """One evolution search whose state and result live in ``out`` (resume rule: the module docstring).

    Args:
        out: directory of ``evolution_state.json`` and ``top_archs.json``.
        config: the search settings.
        resume: continue from ``evolution_state.json`` when it exists and belongs to this search; False
            starts afresh and overwrites it.
        writer: whether this process writes the files (rank 0 under DDP).
        broadcast: the writer's object on every process (identity with one process).
        log: where progress messages go (e.g. ``rank_zero_info``).
        latency_model: what ``config.max_latency`` limits (default ``FlopsProxy``; see ``build_latency_model``).
        provenance: what the scores belong to (``supernet_provenance``); recorded and compared on resume.
    """

    def __init__(self, out: str | os.PathLike[str], config: EvolutionConfig, resume: bool = True, writer: bool = True,
                 broadcast: Callable[[Any], Any] = lambda obj: obj, log: Callable[[str], None] = _no_log,
                 latency_model: LatencyModel | None = None, provenance: dict[str, Any] | None = None) -> None:
        self.out, self.config, self.resume, self.writer = Path(out), config, resume, writer
        self.broadcast, self.log = broadcast, log
        self.latency_model, self.provenance = latency_model, provenance

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def saved_state(self, latency_model: LatencyModel | None = None) -> dict[str, Any] | None:
        """The state to resume from (the writer reads it, every process gets it), or None. Raises
        ``EvolutionStateMismatch`` on every process if it belongs to another search. ``latency_model``: the
        one the search limits (default: the run's own)."""
        latency_model = latency_model or self.latency_model
        state = None
        if self.writer and self.resume and self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_text())
            except json.JSONDecodeError as e:  # handed to every rank, so that all of them stop
                state = {_UNREADABLE: str(e)}
        elif self.writer and self.state_path.exists():
            self.log(f"resume is off: starting the evolution afresh; {self.state_path} will be overwritten")
        state = self.broadcast(state)
        if state is None:
            return None
        if _UNREADABLE in state:
            raise ValueError(f"{self.state_path} is not a readable evolution state ({state[_UNREADABLE]}); delete "
                             "it, or set resume: false to start afresh")
        problems = resume_mismatches(state, search_settings(self.config, latency_model), self.provenance)
        if problems:
            raise EvolutionStateMismatch(
                f"{self.state_path} holds an evolution of another search, so its result would not be this "
                f"one's: {'; '.join(problems)}. Give this search another output directory (EvolutionSearch's "
                "output_dir, e.g. --trainer.callbacks.output_dir DIR), or start afresh and overwrite it with "
                "resume: false (--trainer.callbacks.resume false); only a larger 'generations' continues a saved "
                "search."
            )
        done = " (it is complete: its result is reported again, nothing is evaluated)" if (
            state["generation"] >= self.config.generations) else ""
        self.log(f"resuming the evolution from generation {state['generation']} ({self.state_path}){done}")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        if self.writer:
            atomic_write_json(self.state_path, state)

    def search(self, space: SearchSpace, score_fn: ScoreFn, progress: bool = True) -> EvolutionResult:
        """Run (or resume) the search, saving the state after every generation; the writer then exports
        the top archs and logs them."""
        latency_model = self.latency_model
        if self.config.max_latency is not None and latency_model is None:
            latency_model = FlopsProxy(space)
        result = evolution_search(space, score_fn, self.config, progress=progress and self.writer,
                                  state=self.saved_state(latency_model), on_generation_end=self._save,
                                  latency_model=latency_model, provenance=self.provenance)
        if self.writer:
            path = export_top_archs(self.out / TOP_FILE, result, space)
            best, score = result.best
            self.log(f"\n{format_top_archs(space, result.top)}\n\nbest arch: {best}  "
                     f"(inherited val acc {score:.2f}%, {len(result.scores)} archs evaluated)\nwrote {path}")
        return result
