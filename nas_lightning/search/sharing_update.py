"""DC-NAS's sharing-state inference ("Distribution Consistent Neural Architecture Search", sections 1-2: the
layer-wise optimisation with a self-supervised clustering of archs, whose cluster centres stand for every arch of
their cluster), as an algorithm callable without a Trainer. The choices the paper leaves open are in
docs/design_choices.md, "DC-NAS".

One inference (``infer_sharing_state``), for every layer d and every op o with weights:

1. Sample R archs that choose o at d, uniform at every other decision, from a generator seeded by
   (seed, round, d, o); embed each by its *context* (one-hot choices at the other layers).
2. K-means with K = M (``kmeans``: k-means++ seeding and Lloyd's iterations from that generator; a pure function
   of the points and the generator). The member nearest each centre represents its cluster.
3. Consistency of two clusters at site j (``consistency_scores``): the cosine similarity of the gradients of the
   cross-entropy of their representatives on the weights of the part they run at j, on the same validation
   batch, under the current sharing state. Aligned gradients (score near 1) can share weights; opposed ones
   (near -1) are the zig-zag the paper's introduction describes. Representatives that run different blocks at
   the site (DARTS) share nothing there and score 1.
4. Sharing-state inference (``group_clusters``): clusters whose score is below the threshold tau do not share a
   copy, up to M copies (greedy, largest cluster first). ``assign_copies`` gives each group a copy, keeping the
   copy its representatives ran where it can; a group that needs a new copy takes one no cluster of any site
   that can run the part uses, and that copy starts as its parent's weights (``WeightCopies.copy_``).

Every random draw comes from (seed, round, ...), and the gradients come from one batch that every rank holds
whole, so every rank infers the same state; the method broadcasts rank 0's anyway, against floating-point
differences between devices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nas_lightning.spaces.arch import Arch
from nas_lightning.supernet.copies import weight_copies
from nas_lightning.supernet.sharing_state import SharingState, nearest_centre, one_hot
from nas_lightning.utils.distributed import step_generator

Batch = tuple[torch.Tensor, torch.Tensor]


# --- clustering -----------------------------------------------------------------------------------------------
def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, max_iter: int = 100
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded K-means on ``points`` [N, F]: (centres [k, F], labels [N]).

    k-means++ seeding draws from ``generator``; Lloyd's iterations run until the labels stop changing. A cluster
    left empty takes the point farthest from its centre (lowest index on ties). A pure function of the points and
    the generator's state, so every rank computes the same clustering.
    """
    points = points.double()
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"K-means needs 1 <= k <= the number of points ({n}), got k={k}")
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [points[first]]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        # all points on the centres chosen so far: any point will do, the generator picks it
        weights = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(points[nxt])
        d2 = torch.minimum(d2, ((points - points[nxt]) ** 2).sum(1))
    c = torch.stack(centres)
    labels = nearest_centre(points, c)
    for _ in range(max_iter):
        counts = torch.bincount(labels, minlength=k).double()
        sums = torch.zeros_like(c).index_add_(0, labels, points)
        c = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), c)
        for empty in (counts == 0).nonzero().flatten().tolist():
            far = int(((points - c[labels]) ** 2).sum(1).argmax())
            c[empty] = points[far]
        new = nearest_centre(points, c)
        if torch.equal(new, labels):
            break
        labels = new
    return c, labels


def representatives(points: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[K] index of the member nearest each centre (lowest index on ties)."""
    dist = ((points.double().unsqueeze(1) - centres.unsqueeze(0)) ** 2).sum(-1)  # [N, K]
    dist = torch.where(labels.unsqueeze(1) == torch.arange(len(centres)).unsqueeze(0), dist,
                       torch.full_like(dist, float("inf")))
    return dist.argmin(0)


def sample_contexts(sizes: torch.Tensor, layer: int, op: int, num: int, generator: torch.Generator) -> torch.Tensor:
    """[num, D] choice indices: ``op`` at ``layer``, uniform at every other decision."""
    draw = (torch.rand(num, len(sizes), generator=generator, dtype=torch.float64) * sizes).floor().long()
    draw = torch.minimum(draw, sizes - 1)
    draw[:, layer] = op
    return draw


# --- consistency and inference ----------------------------------------------------------------------------------
def consistency_scores(grads: torch.Tensor) -> torch.Tensor:
    """[K, K] cosine similarity of the rows of ``grads`` [K, P]; a zero gradient scores 0 with everything."""
    g = grads.double()
    norms = g.norm(dim=1)
    unit = g / norms.clamp(min=torch.finfo(torch.float64).tiny).unsqueeze(1)
    scores = unit @ unit.T
    scores = torch.where((norms.unsqueeze(0) > 0) & (norms.unsqueeze(1) > 0), scores, torch.zeros_like(scores))
    return scores.clamp(-1.0, 1.0)


def group_clusters(scores: torch.Tensor, sizes: Sequence[int], threshold: float, max_groups: int) -> list[int]:
    """Group label per cluster: clusters in order of size (largest first, lowest index on ties) join the first
    group whose every member scores >= ``threshold`` with them, else open a new group while fewer than
    ``max_groups`` exist, else join the group of highest mean score."""
    order = sorted(range(len(sizes)), key=lambda k: (-sizes[k], k))
    groups: list[list[int]] = []
    label = [0] * len(sizes)
    for k in order:
        fit = [g for g, members in enumerate(groups) if all(float(scores[k, m]) >= threshold for m in members)]
        if fit:
            g = fit[0]
        elif len(groups) < max_groups:
            g = len(groups)
            groups.append([])
        else:
            g = max(range(len(groups)), key=lambda i: (sum(float(scores[k, m]) for m in groups[i]) / len(groups[i]),
                                                        -i))
        groups[g].append(k)
        label[k] = g
    return label


def assign_copies(groups: Sequence[int], sizes: Sequence[int], previous: Sequence[int], taken: set[int],
                  num_copies: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Copy of every cluster, and the splits (parent, new copy) to apply.

    ``previous[k]`` is the copy cluster k's representative ran; groups, largest first, keep the copy most of
    their members ran (weighted by cluster size) if no larger group took it; the others take the lowest copy in
    no group's hands and outside ``taken`` (copies that other sites running the part still use), starting from
    their parent (the copy their largest member ran). With no such copy the group shares its parent's.
    """
    members: dict[int, list[int]] = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    order = sorted(members, key=lambda g: (-sum(sizes[k] for k in members[g]), g))
    copy_of: dict[int, int] = {}
    used: set[int] = set()
    parent: dict[int, int] = {}
    for g in order:
        votes: dict[int, int] = {}
        for k in members[g]:
            votes[previous[k]] = votes.get(previous[k], 0) + sizes[k]
        parent[g] = previous[max(members[g], key=lambda k: (sizes[k], -k))]
        best = sorted(votes, key=lambda c: (-votes[c], c))
        keep = next((c for c in best if c not in used), None)
        if keep is not None:
            copy_of[g] = keep
            used.add(keep)
    splits = []
    for g in order:
        if g in copy_of:
            continue
        free = next((c for c in range(num_copies) if c not in used and c not in taken), None)
        if free is None:
            copy_of[g] = parent[g]
            continue
        copy_of[g] = free
        used.add(free)
        splits.append((parent[g], free))
    return [copy_of[g] for g in groups], splits


@dataclass
class SiteRecord:
    """What one (layer, site, op) inference saw and decided, for the diagnostics."""

    layer: int
    site: int
    op: int
    part: str
    sizes: list[int]
    scores: torch.Tensor
    copies: list[int]


@dataclass
class InferenceResult:
    """The inferred state (``SharingState.adopt``'s arguments), the splits applied to the weights and the records."""

    centres: torch.Tensor
    clustered: torch.Tensor
    table: torch.Tensor
    samples: torch.Tensor
    labels: torch.Tensor
    splits: list[tuple[str, int, int]] = field(default_factory=list)  # (part, parent copy, new copy)
    records: list[SiteRecord] = field(default_factory=list)

    def state(self) -> tuple[torch.Tensor, ...]:
        return self.centres, self.clustered, self.table, self.samples, self.labels


@contextmanager
def buffers_kept(module: nn.Module) -> Iterator[None]:
    """Forwards in train mode inside the block leave BN running statistics (every buffer) as they were."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def representative_gradients(supernet: nn.Module, state: SharingState, arch: Arch, layer: int, batch: Batch,
                             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                             ) -> dict[int, tuple[str, int, torch.Tensor]]:
    """Per site j of ``layer``: (part, copy, flattened gradient) of ``arch``'s loss on ``batch`` on the weights of
    the part ``arch`` runs at j, under the current sharing state. Train-mode forward; buffers are restored."""
    x, y = batch
    sites = [(j, part, c) for d, j, part, c in state.site_copies(arch) if d == layer]
    if not sites:
        return {}
    copies = weight_copies(supernet)
    params = {j: [p for p in (copies[part].copy_module(c) if part in copies else supernet.get_submodule(part))
                  .parameters() if p.requires_grad] for j, part, c in sites}
    flat = [p for j, _, _ in sites for p in params[j]]
    with buffers_kept(supernet), torch.enable_grad():
        loss = loss_fn(supernet(x, arch), y)
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
    out, i = {}, 0
    for j, part, c in sites:
        n = len(params[j])
        g = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params[j], grads[i:i + n])]
        out[j] = (part, c, torch.cat([t.flatten() for t in g]).detach().double().cpu())
        i += n
    return out


def infer_sharing_state(supernet: nn.Module, state: SharingState, batch: Batch, seed: int, num_archs: int = 256,
                        threshold: float = 0.0,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
                        ) -> InferenceResult:
    """One sharing-state inference (module docstring) of round ``state.rounds``; ``state`` and the weights are
    left as they are (``apply_inference`` adopts the result)."""
    if num_archs < state.M:
        raise ValueError(f"num_archs (R={num_archs}) must be at least num_copies (M={state.M}) to form M clusters")
    space, M = state.space, state.M
    sizes = state.sizes
    D = space.num_decisions
    centres = state.centres.clone()
    clustered = state.clustered.clone()
    table = torch.zeros_like(state.table)
    samples = torch.zeros(D, state.centres.shape[1], num_archs, D, dtype=torch.int16)
    labels = torch.zeros(D, state.centres.shape[1], num_archs, dtype=torch.long)
    result = InferenceResult(centres, clustered, table, samples, labels)
    was_training = supernet.training
    supernet.train()
    pending: list[tuple[int, int, int, list[int], list[int], torch.Tensor, str]] = []  # per site, decided below
    try:
        for d in range(D):
            if not state.layout.reach[d]:
                continue
            for o, op in enumerate(state.choices[d]):
                if not any(f"{b}.candidates.{op}" in state.num_copies for row in state.layout.reach[d] for b in row):
                    continue  # an op without weights (pooling, skip) has nothing to share
                gen = step_generator(seed, f"dcnas/cluster/{d}/{o}", state.rounds)
                archs = sample_contexts(sizes, d, o, num_archs, gen)
                points = one_hot(archs, sizes) * state.context_mask[d]
                c, lab = kmeans(points, M, gen)
                reps = representatives(points, c, lab)
                centres[d, o], clustered[d, o] = c, True
                samples[d, o], labels[d, o] = archs.to(torch.int16), lab
                cluster_sizes = torch.bincount(lab, minlength=M).tolist()
                grads = [representative_gradients(supernet, state, space.arch(archs[int(r)].tolist()), d, batch,
                                                  loss_fn) for r in reps]
                for j in grads[0]:
                    parts = [g[j][0] for g in grads]
                    previous = [g[j][1] for g in grads]
                    if len(set(parts)) == 1:
                        scores = consistency_scores(torch.stack([g[j][2] for g in grads]))
                    else:  # representatives running different blocks share no weights here
                        scores = torch.ones(M, M, dtype=torch.float64)
                    pending.append((d, j, o, cluster_sizes, previous, scores, parts[0]))
    finally:
        supernet.train(was_training)
    _decide(state, pending, threshold, result)
    return result


def _decide(state: SharingState, pending: list, threshold: float, result: InferenceResult) -> None:
    """Group the clusters of every site and give each group a copy; a new copy must be free at every site that
    can run the part (DARTS: the node's other op decision)."""
    reach_of: dict[str, list[tuple[int, int, int]]] = {}  # part -> (d, j, o) sites that can run it
    for d, row in enumerate(state.layout.reach):
        for j, blocks in enumerate(row):
            for o, op in enumerate(state.choices[d]):
                for b in blocks:
                    reach_of.setdefault(f"{b}.candidates.{op}", []).append((d, j, o))
    decided: set[tuple[int, int, int]] = set()
    for d, j, o, sizes, previous, scores, part in pending:
        groups = group_clusters(scores, sizes, threshold, state.M)
        taken = {int(c) for s in reach_of.get(part, []) if s in decided for c in result.table[s].tolist()}
        copies, splits = assign_copies(groups, sizes, previous, taken, state.M)
        result.table[d, j, o] = torch.tensor(copies)
        decided.add((d, j, o))
        result.splits += [(part, parent, new) for parent, new in splits]
        result.records.append(SiteRecord(d, j, o, part, list(sizes), scores, copies))


def apply_inference(supernet: nn.Module, state: SharingState, result: InferenceResult) -> list[tuple[str, int]]:
    """Start every new copy from its parent's weights, adopt the state, and return the (part, copy) pairs that
    were overwritten (their optimiser state is stale)."""
    copies = weight_copies(supernet)
    for part, parent, new in result.splits:
        copies[part].copy_(parent, new)
    state.adopt(*result.state())
    return [(part, new) for part, _, new in result.splits]


def sharing_update_due(epoch: int, warmup_epochs: int, every_n_epochs: int) -> bool:
    """Whether a sharing-state inference runs at the end of 1-based ``epoch``: at ``warmup_epochs`` (at least 1)
    and every ``every_n_epochs`` after it."""
    first = max(warmup_epochs, 1)
    return epoch >= first and (epoch - first) % every_n_epochs == 0
