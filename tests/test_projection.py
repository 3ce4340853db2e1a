"""DI-NAS orthogonal gradient projection (eqs. 6-8, Theorem 4.1): the math against hand-worked numbers
and closed forms, the layer features, ``OrthogonalProjector`` step by step without a Trainer, and the
callback under Lightning (end-to-end P, bf16, resume, 2-process DDP)."""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from typing_extensions import override

from callbacks.projection_matrix_update import ProjectionMatrixUpdate
from nas_lightning.methods import SPOS
from nas_lightning.projection import (
    LayerInputRecorder,
    LayerLayout,
    OrthogonalProjector,
    alpha_at,
    closed_form,
    conv_patches,
    energy_normalised,
    fold_features,
    layer_features,
    project_gradient,
    project_gradients,
    project_layer_gradient,
    rank_one_update,
    select_layers,
    weight_matrix,
    woodbury_update,
)
from nas_lightning.spaces import NB201Space
from nas_lightning.utils.distributed import step_generator

SCRIPT = Path(__file__).parent / "scripts" / "ddp_projection.py"


def tiny_space() -> NB201Space:
    return NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)


def classifier(net: nn.Module) -> tuple[str, nn.Linear]:
    """The supernet's classifier, its one Linear layer, and its module name."""
    (found,) = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    return found


# --- the math ---------------------------------------------------------------------------------------
def test_hand_worked_two_dimensional_case() -> None:
    # One seen feature x = (1, 1), alpha = 1e-3, P_0 = I. Eq. 8:
    #   P x = x, x^T P x = 2, k = x / (2 + alpha), P = I - x x^T / (2 + alpha)
    #   1 / 2.001 = 0.49975012..., so P = [[0.50024988, -0.49975012], [-0.49975012, 0.50024988]].
    # Gradient g = (3, 1): g P = (3 * 0.50024988 - 0.49975012, -3 * 0.49975012 + 0.50024988)
    #                          = (1.00099950, -0.99900050),
    # and (g P) . x = g . (P x) = 4 * alpha / (2 + alpha) = 0.0019990005, against g . x = 4 unprojected:
    # the projected gradient is orthogonal to x up to O(alpha). alpha -> 0 gives P = [[.5, -.5], [-.5, .5]].
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    g = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    P = woodbury_update(torch.eye(2, dtype=torch.float64), x, 1e-3)
    expected = torch.tensor([[0.50024988, -0.49975012], [-0.49975012, 0.50024988]], dtype=torch.float64)
    torch.testing.assert_close(P, expected, atol=1e-8, rtol=0)
    gP = project_gradient(g, P)
    torch.testing.assert_close(gP, torch.tensor([[1.00099950, -0.99900050]], dtype=torch.float64), atol=1e-8, rtol=0)
    assert abs(float(gP @ x.T) - 0.0019990005) < 1e-9
    # As alpha -> 0 the projected gradient becomes exactly orthogonal to the seen feature.
    residues = [abs(float(project_gradient(g, woodbury_update(torch.eye(2, dtype=torch.float64), x, a)) @ x.T))
                for a in (1e-1, 1e-3, 1e-6)]
    assert residues[0] > residues[1] > residues[2] and residues[2] < 1e-5


@pytest.mark.parametrize("n, d", [(3, 6), (9, 5)])
def test_recursion_block_and_closed_form_agree(n: int, d: int) -> None:
    gen = torch.Generator().manual_seed(n)
    A = torch.randn(n, d, generator=gen, dtype=torch.float64)
    alpha = 0.05
    rows = torch.eye(d, dtype=torch.float64)
    for x in A:  # eq. 8, one feature at a time
        rows = rank_one_update(rows, x, alpha)
    block = woodbury_update(torch.eye(d, dtype=torch.float64), A, alpha)  # all at once
    split = woodbury_update(woodbury_update(torch.eye(d, dtype=torch.float64), A[:2], alpha), A[2:], alpha)
    closed = closed_form(A, alpha)
    # Eq. 7's second form, computed by scipy/numpy outside the code under test.
    An = A.numpy()
    reference = alpha * scipy.linalg.inv(An.T @ An + alpha * np.eye(d))
    for P in (rows, block, split, closed):
        np.testing.assert_allclose(P.numpy(), reference, rtol=1e-8, atol=1e-10)
    assert torch.equal(block, block.T)


def test_grouped_update_is_one_update_per_group() -> None:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)  # 3 groups, 4 rows of width 5
    P = woodbury_update(torch.eye(5, dtype=torch.float64).expand(3, 5, 5), X, 0.1)
    for g in range(3):
        torch.testing.assert_close(P[g], closed_form(X[g], 0.1))
    grad = torch.randn(6, 5, generator=gen, dtype=torch.float64)  # 2 output channels per group
    projected = project_gradient(grad, P)
    for g in range(3):
        torch.testing.assert_close(projected[2 * g: 2 * g + 2], grad[2 * g: 2 * g + 2] @ P[g])


def test_alpha_schedule() -> None:
    assert alpha_at(1e-3, 0.7, decay=False) == 1e-3
    # OWM: alpha0 ** progress: 1 at the start, sqrt(alpha0) halfway, alpha0 at the end.
    assert alpha_at(1e-4, 0.0, decay=True) == 1.0
    assert alpha_at(1e-4, 0.5, decay=True) == pytest.approx(1e-2)
    assert alpha_at(1e-4, 1.0, decay=True) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="alpha0 < 1"):
        alpha_at(2.0, 0.5, decay=True)
    with pytest.raises(ValueError, match="> 0"):
        alpha_at(0.0, 0.5, decay=False)


# --- Theorem 4.1 ------------------------------------------------------------------------------------
# The bound we check (our derivation; the paper's formula is lost): with P = alpha (A^T A + alpha I)^-1
# (eq. 7) and x = A^T e_i a seen feature, P x = alpha A^T (A A^T + alpha I)^-1 e_i, whose norm is at most
# alpha * max_j s_j / (s_j^2 + alpha) <= alpha / s_min(A) (s_j the nonzero singular values of A). After
# one projected SGD step dW = -lr G P (eq. 6), the layer's output on x moves by
#     ||dW x|| = lr ||G P x|| <= lr * ||G||_2 * alpha / s_min(A),
# i.e. it vanishes with alpha, while an unprojected step moves it by about lr ||G x||.
def _bound(G: torch.Tensor, A: torch.Tensor, lr: float, alpha: float) -> float:
    s = torch.linalg.svdvals(A)
    s_min = s[s > 1e-9 * s[0]].min()
    return float(lr * torch.linalg.matrix_norm(G, ord=2) * alpha / s_min)


def _sgd_step(layer: nn.Module, inputs: torch.Tensor, target: torch.Tensor, lr: float,
              P: torch.Tensor | None) -> nn.Module:
    new = copy.deepcopy(layer)
    F.mse_loss(new(inputs), target).backward()
    if P is not None:
        assert project_layer_gradient(new, LayerLayout.of(new), P)
    with torch.no_grad():
        for p in new.parameters():
            p -= lr * p.grad
    return new


def test_theorem_4_1_linear() -> None:
    torch.manual_seed(0)
    lr, alpha = 0.5, 1e-3
    layer = nn.Linear(8, 4, dtype=torch.float64)
    layout = LayerLayout.of(layer)
    seen = torch.randn(5, 8, dtype=torch.float64)  # five previous archs' mean inputs
    P = layout.identity().double()
    recorder = LayerInputRecorder({"fc": layer})
    for x in seen:  # one "step" each: record the input, fold it in
        recorder.active = True
        layer(x[None])
        (total, count), = recorder.pop().values()
        P = woodbury_update(P, layer_features(layer, layout, total / count, 16, torch.Generator()).double(), alpha)
    recorder.remove()
    new_inputs, target = torch.randn(32, 8, dtype=torch.float64), torch.randn(32, 4, dtype=torch.float64)
    projected = _sgd_step(layer, new_inputs, target, lr, P)
    plain = _sgd_step(layer, new_inputs, target, lr, None)

    A = torch.cat([seen, torch.ones(5, 1, dtype=torch.float64)], 1)  # [x; 1]: the bias is part of W
    G = torch.cat([plain.weight.grad, plain.bias.grad[:, None]], 1)
    bound = _bound(G, A, lr, alpha)
    with torch.no_grad():
        moved = (projected(seen) - layer(seen)).norm(dim=1)
        moved_plain = (plain(seen) - layer(seen)).norm(dim=1)
    assert bool((moved <= bound).all()), (moved, bound)
    assert float(moved_plain.min()) > 100 * bound  # the unprojected step does disturb these outputs


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_theorem_4_1_conv_on_its_patches(groups: int) -> None:
    torch.manual_seed(groups)
    lr, alpha, max_patches = 0.5, 1e-3, 16
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=True, dtype=torch.float64)
    layout = LayerLayout.of(conv)
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)  # one input: its batch mean is itself
    gen = torch.Generator().manual_seed(7)
    X = layer_features(conv, layout, x[0], max_patches, gen).double()
    P = woodbury_update(layout.identity().double(), X, alpha)
    kept = torch.randperm(25, generator=torch.Generator().manual_seed(7))[:max_patches]  # the folded positions

    new_x, target = torch.randn(4, 8, 5, 5, dtype=torch.float64), torch.randn(4, 8, 5, 5, dtype=torch.float64)
    projected = _sgd_step(conv, new_x, target, lr, P)
    plain = _sgd_step(conv, new_x, target, lr, None)
    with torch.no_grad():
        moved = (projected(x) - conv(x))[0].flatten(1)[:, kept]  # (out, folded positions)
        moved_plain = (plain(x) - conv(x))[0].flatten(1)[:, kept]
    patches = torch.cat([conv_patches(conv, x[0])[kept], torch.ones(max_patches, 1, dtype=torch.float64)], 1)
    per_group_in, per_group_out = 8 // groups * 9, 8 // groups
    G = torch.cat([plain.weight.grad.flatten(1), plain.bias.grad[:, None]], 1)
    for g in range(groups):  # each group of output channels sees only its input channels
        cols = [*range(g * per_group_in, (g + 1) * per_group_in), 8 * 9]
        rows = slice(g * per_group_out, (g + 1) * per_group_out)
        bound = _bound(G[rows], patches[:, cols], lr, alpha)
        assert bool((moved[rows].norm(dim=0) <= bound).all()), (g, moved[rows].norm(dim=0).max(), bound)
        assert float(moved_plain[rows].norm(dim=0).max()) > 100 * bound


# --- Theorem 4.1 under a real optimiser: the applied update is projected ---------------------------
class _Head(nn.Module):
    def __init__(self, d: int, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, out, dtype=torch.float64)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _archs_in_turn(make_opt, rule: str, n_archs: int = 20, steps_per_arch: int = 2, alpha: float = 1e-3,
                   d: int = 64) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A Linear layer trained on ``n_archs`` "archs" in turn (each its own input distribution and target map,
    ``steps_per_arch`` optimiser steps each), folding each step's mean input after it. ``rule``: "update"
    (``OrthogonalProjector``: the applied update is projected), "gradient" (the gradient is projected before
    the optimiser, the rule before issue 11) or "none". Returns, per arch but the last, how far the outputs
    on its folded features [x; 1] moved from right after its training to the end; the same for the bound
    of Theorem 4.1 summed over the later steps (``_bound`` with the optimiser's raw update for lr * G); and
    the mean loss drop of an arch's first step (the layer still learns)."""
    torch.manual_seed(0)
    net = _Head(d, 4)
    opt = make_opt(net.parameters())
    projector = OrthogonalProjector(alpha=alpha, max_patches=1, alpha_scale="absolute")
    projector.attach(net)
    means = torch.randn(n_archs, d, dtype=torch.float64) * 0.5
    maps = torch.randn(n_archs, d, 4, dtype=torch.float64) / d ** 0.5
    rows: list[torch.Tensor] = []  # the folded features [x; 1], in fold order
    owner: list[int] = []
    W_after: dict[int, torch.Tensor] = {}
    bound = torch.zeros(n_archs, dtype=torch.float64)
    drops = []
    t = 0
    for a in range(n_archs):
        for s in range(steps_per_arch):
            x = means[a] + 0.3 * torch.randn(16, d, dtype=torch.float64)
            y = x @ maps[a]
            opt.zero_grad(set_to_none=True)
            projector.begin_step(t)
            loss = F.mse_loss(net(x), y)
            loss.backward()
            if rule == "gradient" and "fc" in projector.P:
                project_gradients(projector.modules, projector.layouts, projector.P)
            before = weight_matrix(net.fc, projector.layouts["fc"]).clone()
            if rule == "update":
                projector.before_optimizer_step(t, opt)
                opt.step()
            else:  # copied after the step, the projector has no update to project and only folds the features
                opt.step()
                projector.before_optimizer_step(t, opt)
            raw = weight_matrix(net.fc, projector.layouts["fc"]) - before
            projector.end_step()
            if rows:  # Theorem 4.1 for this step's P (the rows folded before it), each earlier arch's rows
                A = torch.stack(rows)
                s_vals = torch.linalg.svdvals(A)
                s_min = s_vals[s_vals > 1e-9 * s_vals[0]].min()
                step_bound = torch.linalg.matrix_norm(raw, ord=2) * alpha / s_min
                for b in set(owner):
                    bound[b] += step_bound
            rows.append(torch.cat([x.mean(0), torch.ones(1, dtype=torch.float64)]))
            owner.append(a)
            if s == 0:
                with torch.no_grad():
                    drops.append(float(loss - F.mse_loss(net(x), y)))
            t += 1
        W_after[a] = weight_matrix(net.fc, projector.layouts["fc"]).clone()
    W_end = weight_matrix(net.fc, projector.layouts["fc"])
    A, who = torch.stack(rows), torch.tensor(owner)
    moved = torch.stack([((W_end - W_after[a]) @ A[who == a].T).norm(dim=0).max() for a in range(n_archs - 1)])
    return moved, bound[: n_archs - 1], sum(drops) / len(drops)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_projected_updates_keep_earlier_archs_outputs_within_theorem_4_1(name: str) -> None:
    """The issue's experiment: a Linear layer trained on 20 archs in turn. Projecting the applied update
    keeps every earlier arch's outputs on its folded features within Theorem 4.1's bound with plain SGD, with
    SGD(momentum=0.9, weight_decay=5e-4) and with Adam, while each arch still learns. Projecting the gradient
    before the optimiser (the old rule) protects only under plain SGD: momentum and weight decay undo it."""
    make_opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05),
                "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
                "adam": lambda p: torch.optim.Adam(p, lr=0.01)}[name]
    moved, bound, drop = _archs_in_turn(make_opt, "update")
    moved_plain, _, _ = _archs_in_turn(make_opt, "none")
    moved_grad, _, _ = _archs_in_turn(make_opt, "gradient")
    print(f"{name}: earlier archs' outputs moved by {moved.mean():.2e} (update projected), {moved_grad.mean():.2e} "
          f"(gradient projected), {moved_plain.mean():.2e} (not projected); bound {bound.mean():.2e}")
    assert bool((moved <= bound).all()), (moved, bound)
    assert float(moved.max()) < 1e-3 * float(moved_plain.mean())
    assert drop > 0  # each arch's own first step still lowers its loss
    if name == "sgd":  # eq. 6 as the paper writes it: the two rules agree for plain SGD
        torch.testing.assert_close(moved_grad, moved, rtol=1e-3, atol=1e-9)
    else:  # the momentum buffer and weight decay carry unprojected directions into the update
        assert float(moved_grad.mean()) > 0.1 * float(moved_plain.mean())


# --- features ---------------------------------------------------------------------------------------
def test_conv_patches_and_subsample_match_explicit_slicing() -> None:
    conv = nn.Conv2d(6, 4, 3, stride=2, padding=1, dilation=1, groups=2, bias=False)
    layout = LayerLayout.of(conv)
    assert (layout.groups, layout.dim) == (2, 27)
    x = torch.randn(6, 7, 7)
    padded = F.pad(x, (1, 1, 1, 1))
    # Position (i, j) of the 4x4 output sees padded[:, 2i:2i+3, 2j:2j+3], flattened channel-major.
    explicit = torch.stack([padded[:, 2 * i: 2 * i + 3, 2 * j: 2 * j + 3].reshape(-1)
                            for i in range(4) for j in range(4)])
    torch.testing.assert_close(conv_patches(conv, x), explicit)
    X = layer_features(conv, layout, x, 5, torch.Generator().manual_seed(3))
    keep = torch.randperm(16, generator=torch.Generator().manual_seed(3))[:5]
    assert X.shape == (2, 5, 27)
    torch.testing.assert_close(X[0], explicit[keep, :27])
    torch.testing.assert_close(X[1], explicit[keep, 27:])
    # The conv output at a kept position is exactly W_g times that row, per group.
    y = conv(x[None])[0].flatten(1)
    W = conv.weight.reshape(2, 2, 27)
    torch.testing.assert_close(y[:, keep], torch.cat([W[0] @ X[0].T, W[1] @ X[1].T]), rtol=1e-5, atol=1e-6)


def test_linear_layers_can_have_their_own_alpha() -> None:
    """OWM's per-layer alphas: after one fold, the Linear's P is eq. 7 at ``alpha_linear`` and the conv's at
    ``alpha``, each from its own features."""
    torch.manual_seed(0)
    layers = {"conv": nn.Conv2d(2, 3, 3, bias=False), "fc": nn.Linear(5, 4)}
    layouts = {n: LayerLayout.of(m) for n, m in layers.items()}
    means = {"conv": torch.randn(2, 4, 4), "fc": torch.randn(5)}
    P: dict[str, torch.Tensor] = {}
    fold_features(layers, layouts, P, means, 0.5, 4, torch.Generator().manual_seed(1), alpha_linear=3.0,
                  alpha_scale="absolute")
    X_conv = layer_features(layers["conv"], layouts["conv"], means["conv"], 4, torch.Generator().manual_seed(1))
    X_fc = torch.cat([means["fc"], torch.ones(1)])[None]  # the bias column
    torch.testing.assert_close(P["conv"], closed_form(X_conv.double(), 0.5).float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(P["fc"], closed_form(X_fc.double(), 3.0).float(), rtol=1e-4, atol=1e-5)
    cb = ProjectionMatrixUpdate(alpha=1e-3, alpha_linear=0.1, alpha_decay=True)
    cb.projector.set_training_length(100)
    assert cb.projector.alphas(cb.projector.progress(50)) == pytest.approx((1e-3 ** 0.5, 0.1 ** 0.5))
    with pytest.raises(ValueError, match="alpha"):
        ProjectionMatrixUpdate(alpha_linear=0.0)


@pytest.mark.parametrize("groups", [1, 2])
def test_energy_alpha_is_scale_free(groups: int) -> None:
    """``alpha_scale="energy"``: a fold of rows X is eq. 7 at alpha * e, e the mean squared row norm (per
    group), so scaling a layer's inputs leaves P unchanged; an absolute alpha does not."""
    torch.manual_seed(groups)
    conv = nn.Conv2d(4, 4, 3, groups=groups, bias=False)  # a bias's constant 1 would not scale with the input
    layers, layouts = {"conv": conv}, {"conv": LayerLayout.of(conv)}
    mean = torch.randn(4, 5, 5)
    Ps = {}
    for scale, c in (("energy", 1.0), ("energy", 0.1), ("absolute", 1.0), ("absolute", 0.1)):
        P: dict[str, torch.Tensor] = {}
        fold_features(layers, layouts, P, {"conv": c * mean}, 5.0, 6, torch.Generator().manual_seed(0),
                      alpha_scale=scale)
        Ps[scale, c] = P["conv"]
    torch.testing.assert_close(Ps["energy", 0.1], Ps["energy", 1.0], rtol=1e-4, atol=1e-5)
    assert (Ps["absolute", 0.1] - Ps["absolute", 1.0]).abs().max() > 0.2
    X = layer_features(conv, layouts["conv"], mean, 6, torch.Generator().manual_seed(0)).double()
    X = X if groups > 1 else X[None]
    for g in range(groups):
        e = float(X[g].square().sum(1).mean())
        got = Ps["energy", 1.0] if groups == 1 else Ps["energy", 1.0][g]
        torch.testing.assert_close(got.double(), closed_form(X[g], 5.0 * e), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(energy_normalised(torch.zeros(3, 4)), torch.zeros(3, 4))  # a zero layer stays zero
    # With a bias, e counts the bias's 1 too: eq. 7 at alpha * e on [x; 1].
    fc = nn.Linear(6, 2)
    x = torch.randn(6)
    P1: dict[str, torch.Tensor] = {}
    fold_features({"fc": fc}, {"fc": LayerLayout.of(fc)}, P1, {"fc": x}, 0.1, 4, torch.Generator())
    row = torch.cat([x, torch.ones(1)])[None].double()
    torch.testing.assert_close(P1["fc"].double(), closed_form(row, 0.1 * float(row.square().sum())), rtol=1e-4,
                               atol=1e-5)


def test_recorder_keeps_the_batch_mean_of_the_layers_that_ran() -> None:
    space = tiny_space()
    net = space.build_supernet()
    layers = select_layers(net, "all")
    recorder = LayerInputRecorder(layers)
    x = torch.randn(6, 1, 8, 8)
    arch = space.decode("|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|")
    with torch.no_grad():
        net(x, arch)  # inactive and no_grad: nothing recorded
    recorder.active = True
    with torch.no_grad():
        net(x, arch)  # an evaluation pass
    assert recorder.pop() == {}
    net(x, arch).sum().backward()
    recorded = recorder.pop()
    ran = {name for name, m in layers.items() if m.weight.grad is not None}  # autograd's view of the path
    assert set(recorded) == ran and len(ran) < len(layers)
    total, count = recorded["stem.0"]
    assert count == 6
    torch.testing.assert_close(total / count, x.mean(0))
    # A second micro-batch of the same step adds up: the mean is over both.
    x2 = torch.randn(2, 1, 8, 8)
    net(x, arch), net(x2, arch)
    total, count = recorder.pop()["stem.0"]
    torch.testing.assert_close(total / count, torch.cat([x, x2]).mean(0))
    recorder.remove()
    net(x, arch)
    assert recorder.pop() == {}


def test_unselected_gradients_are_left_alone_and_selected_ones_projected() -> None:
    torch.manual_seed(0)
    space = tiny_space()
    net = space.build_supernet()
    layers = select_layers(net, "all")
    layouts = {n: LayerLayout.of(m) for n, m in layers.items()}
    gen = torch.Generator().manual_seed(0)
    P = {n: woodbury_update(layouts[n].identity(), torch.randn(3, layouts[n].dim, generator=gen), 1e-2)
         for n in layers}
    arch = space.decode("|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|")
    F.cross_entropy(net(torch.randn(4, 1, 8, 8), arch), torch.tensor([0, 1, 2, 3])).backward()
    before = {n: (m.weight.grad.clone() if m.weight.grad is not None else None) for n, m in layers.items()}
    frozen, _ = classifier(net)  # pretend another optimiser owns it
    params = {id(p) for n, p in net.named_parameters() if not n.startswith(frozen)}
    done = project_gradients(layers, layouts, P, params)
    selected = [n for n, g in before.items() if g is not None and n != frozen]
    assert done == len(selected) and 0 < done < len(layers) - 1
    for name, module in layers.items():
        if before[name] is None:
            assert module.weight.grad is None, name
        elif name == frozen:
            assert torch.equal(module.weight.grad, before[name])
        else:
            w = before[name]
            expected = project_gradient(w.reshape(w.shape[0], -1), P[name]).reshape(w.shape)
            torch.testing.assert_close(module.weight.grad, expected)
            assert not torch.allclose(module.weight.grad, w)


def test_the_stem_conv_is_projected_and_batchnorm_is_not() -> None:
    """What ``layers="all"`` covers (docs/design_choices.md, "DI-NAS"): every Conv2d and Linear, the stem conv
    and the classifier included; BatchNorm affine weights take the optimiser's own step, unprojected."""
    torch.manual_seed(0)
    space = tiny_space()
    net = space.build_supernet()
    projector = OrthogonalProjector(max_patches=4)
    projector.attach(net)
    bns = {n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d) and m.affine}
    assert "stem.0" in projector.modules and classifier(net)[0] in projector.modules
    assert bns and not bns & set(projector.modules)
    plain = copy.deepcopy(net)
    arch = space.decode("|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|")
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (net, plain)]
    for t in range(2):
        for model, opt in zip((net, plain), opts):
            opt.zero_grad(set_to_none=True)
            if model is net:
                projector.begin_step(t)
            F.cross_entropy(model(x, arch), y).backward()
            if model is net:
                projector.before_optimizer_step(t, opt)
            opt.step()
            if model is net:
                projector.end_step()
    params, plain_params = dict(net.named_parameters()), dict(plain.named_parameters())
    stem_bn = "stem.1.weight"  # the stem's BN: the same step as without projection (same input, same gradient)
    assert stem_bn in params and torch.equal(params[stem_bn], plain_params[stem_bn])
    assert not torch.allclose(params["stem.0.weight"], plain_params["stem.0.weight"])  # the stem conv is projected


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="layers must be one of"):
        ProjectionMatrixUpdate(layers="bn")
    with pytest.raises(ValueError, match="every_n_steps"):
        ProjectionMatrixUpdate(every_n_steps=0)
    with pytest.raises(ValueError, match="alpha0 < 1"):
        ProjectionMatrixUpdate(alpha=1.5, alpha_decay=True)


# --- the projector, without a Trainer ---------------------------------------------------------------
class TinyNet(nn.Module):
    """A conv (with bias) and a Linear classifier: the two layer kinds the projector reads as matrices."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=True)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _expected_features(net: TinyNet, x: torch.Tensor, max_patches: int,
                       gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Eq. 7's rows for one step, built by hand: the conv's patches of the batch-mean input (a seeded
    subsample drawn as the projector draws it) and the fc's batch-mean input, each with the bias's 1."""
    mean = x.mean(0)
    patches = F.unfold(mean[None], 3)[0].T  # (16 positions, 2*3*3)
    patches = patches[torch.randperm(patches.shape[0], generator=gen)[:max_patches]]
    with torch.no_grad():
        fc_in = torch.relu(net.conv(x)).flatten(1).mean(0)
    return {"conv": torch.cat([patches, torch.ones(max_patches, 1)], 1),
            "fc": torch.cat([fc_in, torch.ones(1)])[None]}


def test_projector_steps_give_eq_7_and_project_with_the_previous_P() -> None:
    """Three steps of begin / forward+backward / snapshot / SGD / end: each applied update [dW | db] (after
    momentum and weight decay) is projected with eq. 7's P over the features of the steps before it (eq. 6),
    and after step t P equals
    eq. 7 over the features of steps s <= t (conv: patches; Linear: the mean input; both with the bias's 1).
    The conv uses ``alpha``, the Linear ``alpha_linear``."""
    torch.manual_seed(0)
    net = TinyNet()
    alpha, alpha_linear, max_patches, seed = 0.05, 0.5, 6, 2
    projector = OrthogonalProjector(alpha=alpha, alpha_linear=alpha_linear, max_patches=max_patches, seed=seed,
                                    alpha_scale="absolute")
    projector.attach(net)
    assert set(projector.modules) == {"conv", "fc"}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    seen: dict[str, list[torch.Tensor]] = {"conv": [], "fc": []}
    for t in range(3):
        x, y = torch.randn(5, 2, 6, 6), torch.randint(0, 4, (5,))
        # The rows this step will fold, from the weights the step starts from (the fc's input changes after it).
        rows = _expected_features(net, x, max_patches, step_generator(seed, "owm-patches", t))
        opt.zero_grad(set_to_none=True)
        projector.begin_step(t)
        F.cross_entropy(net(x), y).backward()
        before = {n: weight_matrix(m, projector.layouts[n]).clone() for n, m in projector.modules.items()}
        assert projector.before_optimizer_step(t, opt)
        opt.step()  # SGD with momentum and weight decay: the update applied is not -lr * G
        raw = {n: weight_matrix(m, projector.layouts[n]) - before[n] for n, m in projector.modules.items()}
        assert projector.end_step()
        for name, a in (("conv", alpha), ("fc", alpha_linear)):
            P_before = closed_form(torch.cat(seen[name]).double(), a) if seen[name] else torch.eye(raw[name].shape[1])
            applied = weight_matrix(projector.modules[name], projector.layouts[name]) - before[name]
            torch.testing.assert_close(applied.double(), raw[name].double() @ P_before.double(), rtol=1e-4, atol=1e-6)
        for name, a in (("conv", alpha), ("fc", alpha_linear)):
            seen[name].append(rows[name])
            expected = closed_form(torch.cat(seen[name]).double(), a)
            torch.testing.assert_close(projector.P[name].double(), expected, rtol=1e-4, atol=1e-5, msg=f"{name} {t}")
            assert projector.P[name].dtype == torch.float32
    assert projector.updates == 3
    projector.detach()
    net(torch.randn(1, 2, 6, 6)).sum().backward()  # hooks gone: nothing recorded, nothing to fold
    assert not projector.end_step() and projector.updates == 3


def test_projector_folds_every_n_steps_and_only_after_its_optimiser_steps() -> None:
    torch.manual_seed(1)
    net = TinyNet()
    projector = OrthogonalProjector(alpha=0.1, every_n_steps=2, layers="linear")
    projector.attach(net)
    assert set(projector.modules) == {"fc"}
    x = torch.randn(4, 2, 6, 6)
    history = []
    for t in range(4):
        projector.begin_step(t)
        net(x).sum().backward()
        assert not projector.end_step()  # before the step: an accumulating micro-batch, nothing folded
        assert projector.before_optimizer_step(t)
        assert projector.end_step() == (t % 2 == 0)
        history.append(projector.P["fc"].clone())
        net.zero_grad(set_to_none=True)
    assert projector.updates == 2
    assert torch.equal(history[1], history[0]) and not torch.equal(history[2], history[1])
    # An optimiser that steps none of the projected weights (a controller's) is skipped: no projection, no fold.
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    projector.begin_step(4)
    net(x).sum().backward()
    before = net.fc.weight.grad.clone()
    assert not projector.before_optimizer_step(4, other)
    assert torch.equal(net.fc.weight.grad, before) and not projector.end_step()


def test_projector_sums_inputs_with_reduce() -> None:
    """``reduce`` sums the input sums and the counts (here: two ranks with the same inputs, i.e. doubled),
    so the mean, and P, equal one process's; it is called once per fold."""
    calls = []

    def twice(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.numel())
        return 2 * t

    Ps = []
    for reduce in (None, twice):
        torch.manual_seed(2)
        net = TinyNet()
        projector = OrthogonalProjector(alpha=0.1, max_patches=4)
        projector.attach(net)
        projector.begin_step(0)
        net(torch.randn(3, 2, 6, 6)).sum().backward()
        projector.before_optimizer_step(0)
        assert projector.end_step(reduce)
        Ps.append(projector.P)
    assert len(calls) == 1
    for name in Ps[0]:
        torch.testing.assert_close(Ps[1][name], Ps[0][name])


def test_projector_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(3)
    net = TinyNet()
    first = OrthogonalProjector(alpha=1e-2, alpha_decay=True, max_patches=4, seed=5)
    first.attach(net)
    first.set_training_length(4)
    x = torch.randn(4, 2, 6, 6)

    def step(projector: OrthogonalProjector, t: int) -> None:
        net.zero_grad(set_to_none=True)
        projector.begin_step(t)
        net(x).sum().backward()
        projector.before_optimizer_step(t)
        projector.end_step()

    for t in range(2):
        step(first, t)
    state = first.state_dict()
    assert set(state) == {"P", "updates"} and state["updates"] == 2 and set(state["P"]) == {"conv", "fc"}
    second = OrthogonalProjector(alpha=1e-2, alpha_decay=True, max_patches=4, seed=5)
    second.load_state_dict({"P": {n: p.double().clone() for n, p in state["P"].items()}, "updates": 2})
    assert all(p.dtype == torch.float32 and torch.equal(p, state["P"][n]) for n, p in second.P.items())
    first.detach()
    second.attach(net)
    second.set_training_length(4)
    step(second, 2)
    first.attach(net)
    step(first, 2)
    assert first.updates == second.updates == 3
    for name in first.P:
        assert torch.equal(first.P[name], second.P[name]), name
    with pytest.raises(ValueError, match="finite training length"):
        first.set_training_length(float("inf"))


def test_projected_steps_copy_P_at_the_runs_alphas() -> None:
    torch.manual_seed(4)
    net = TinyNet()
    projector = OrthogonalProjector(alpha=1e-4, alpha_linear=1e-2, alpha_decay=True, max_patches=4)
    projector.attach(net)
    projector.set_training_length(10)
    projector.begin_step(0)
    net(torch.randn(2, 2, 6, 6)).sum().backward()
    projector.before_optimizer_step(0)
    projector.end_step()
    rule = projector.projected_steps(copy.deepcopy(net), projector.progress(5))
    assert rule.alpha == pytest.approx(1e-2) and rule.projector.alpha_linear == pytest.approx(1e-1)
    assert set(rule.P) == set(projector.P)
    assert all(torch.equal(rule.P[n], p) and rule.P[n] is not p for n, p in projector.P.items())
    snapshot = {n: p.clone() for n, p in projector.P.items()}
    rule.begin_step()
    rule.projector.modules["fc"](torch.randn(3, 48)).sum().backward()
    rule.before_optimizer_step()
    rule.end_step()
    rule.close()
    assert not torch.equal(rule.P["fc"], snapshot["fc"]) and torch.equal(rule.P["conv"], snapshot["conv"])
    assert all(torch.equal(projector.P[n], p) for n, p in snapshot.items())


# --- the callback under Lightning -------------------------------------------------------------------
def _batches(n: int, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=gen), torch.randint(0, 5, (size,), generator=gen))
            for _ in range(n)]


def _model() -> SPOS:
    return SPOS(tiny_space(), seed=4, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                num_eval_archs=0)


def _trainer(root: Path, callbacks: list[pl.Callback], **kw) -> pl.Trainer:
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=root, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks, **kw)


def _head(pl_module: pl.LightningModule) -> torch.Tensor:
    """[W | b] of the supernet's classifier."""
    c = classifier(pl_module.supernet)[1]
    return torch.cat([c.weight.detach(), c.bias.detach()[:, None]], 1).clone()


class ClassifierInputs(pl.Callback):
    """The classifier's mean input of each step and its [W | b] after each step, seen independently of the
    projection callback (listed before this one, so this sees the projected step)."""

    def __init__(self) -> None:
        self.means: list[torch.Tensor] = []
        self.after: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.handle = classifier(pl_module.supernet)[1].register_forward_pre_hook(
            lambda m, args: self.means.append(args[0].detach().mean(0)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.handle.remove()
        self.after.append(_head(pl_module))


class RawStep(pl.Callback):
    """Listed before the projection callback: [W | b] of the classifier before each optimiser step and right
    after it, before the projection callback replaces the update by its projection."""

    def __init__(self) -> None:
        self.before: list[torch.Tensor] = []
        self.raw: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(_head(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.raw.append(_head(pl_module))


def test_fit_folds_each_steps_mean_input_after_its_step(tmp_path: Path) -> None:
    """End to end on the classifier (a Linear of width 16, bias included): after step t, P equals eq. 7
    over the mean inputs [x_s; 1] of steps s <= t, and the update [dW | db] step t applied (SGD with momentum
    and weight decay) was projected with the P of steps s < t (eq. 6; its own features are folded in after
    it)."""
    pl.seed_everything(0)
    alpha = 0.1
    projection = ProjectionMatrixUpdate(alpha=alpha, layers="linear", alpha_scale="absolute")
    spy, raw = ClassifierInputs(), RawStep()
    model = _model()
    head, _ = classifier(model.supernet)
    _trainer(tmp_path, [raw, projection, spy], max_steps=3).fit(model, DataLoader(_batches(3), batch_size=None))
    assert list(projection.P) == [head] and projection.updates == 3
    A = torch.stack([torch.cat([m, torch.ones(1)]) for m in spy.means]).double()
    torch.testing.assert_close(projection.P[head].double(), closed_form(A, alpha), rtol=1e-4, atol=1e-5)
    assert projection.P[head].dtype == torch.float32
    for t in range(3):
        P_before = closed_form(A[:t], alpha) if t else torch.eye(17, dtype=torch.float64)
        expected = (raw.raw[t] - raw.before[t]).double() @ P_before
        got = (spy.after[t] - raw.before[t]).double()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6, msg=f"step {t}")
        assert t == 0 or not torch.allclose(got, (raw.raw[t] - raw.before[t]).double(), atol=1e-6)
    assert not torch.allclose(closed_form(A[:2], alpha), torch.eye(17, dtype=torch.float64), atol=1e-2)


def test_bf16_mixed_keeps_P_in_fp32(tmp_path: Path) -> None:
    pl.seed_everything(0)
    projection = ProjectionMatrixUpdate(every_n_steps=2)
    model = _model()
    _trainer(tmp_path, [projection], max_steps=3, precision="bf16-mixed").fit(
        model, DataLoader(_batches(3), batch_size=None))
    assert projection.updates == 2  # steps 0 and 2
    assert projection.P and all(P.dtype == torch.float32 for P in projection.P.values())
    eye = {n: LayerLayout.of(m).identity() for n, m in select_layers(model.supernet, "all").items()}
    assert all(torch.isfinite(P).all() and torch.equal(P, P.mT) for P in projection.P.values())
    # A conv fed by a 'none' node sees zeros and keeps P = I; the stem and classifier never do.
    moved = {n for n, P in projection.P.items() if not torch.allclose(P, eye[n])}
    assert {"stem.0", classifier(model.supernet)[0]} <= moved and len(moved) > len(projection.P) // 2


class OverflowAt(pl.Callback):
    """Makes one step's gradients non-finite before AMP's scaler unscales them, so the scaler skips it."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            for p in pl_module.supernet.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("inf"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append({n: p.detach().clone() for n, p in pl_module.supernet.named_parameters()})


def test_a_step_amp_skipped_is_neither_projected_nor_folded(tmp_path: Path) -> None:
    """16-mixed with a gradient scaler: step 1 overflows, the scaler skips it (nothing applied), so the
    callback neither projects nor folds it; the other steps are folded as usual."""
    pl.seed_everything(0)
    projection, overflow = ProjectionMatrixUpdate(max_patches=4), OverflowAt(step=1)
    model = _model()
    scaler = torch.amp.GradScaler("cpu")
    plugin = pl.plugins.precision.MixedPrecision("16-mixed", "cpu", scaler=scaler)
    _trainer(tmp_path, [projection, overflow], max_steps=3, plugins=[plugin]).fit(
        model, DataLoader(_batches(3), batch_size=None))
    assert scaler.get_scale() < 2.0 ** 16  # the scaler did skip a step
    assert projection.updates == 2  # steps 0 and 2; step 1 was skipped
    for name, p in overflow.weights[1].items():
        assert torch.equal(p, overflow.weights[0][name]), name  # the skipped step left every weight as it was
    assert any(not torch.equal(p, overflow.weights[1][n]) for n, p in overflow.weights[2].items())


def test_surviving_share_is_logged_per_layer(tmp_path: Path) -> None:
    """Every ``log_every_n_steps`` steps, each projected layer's |update after projection| / |before| reaches
    the logger: in (0, 1] (P is a contraction), below 1 once its features constrain it."""
    pl.seed_everything(0)
    projection = ProjectionMatrixUpdate(max_patches=4)
    logger = pl.loggers.CSVLogger(tmp_path, name="logs")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=logger, log_every_n_steps=2, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, max_steps=5, callbacks=[projection])
    model = _model()
    trainer.fit(model, DataLoader(_batches(5), batch_size=None))
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    logged = [r for r in rows if r.get("projection/surviving_mean")]
    assert sorted(int(r["step"]) for r in logged) == [2, 4]  # step 0 has no P yet; odd steps are not logged
    layers = [k.removeprefix("projection/surviving/") for k in rows[0] if k.startswith("projection/surviving/")]
    assert "stem.0" in layers and set(layers) <= set(projection.P)
    values = [float(r[f"projection/surviving/{n}"]) for r in logged for n in layers if r[f"projection/surviving/{n}"]]
    assert values and all(0 < v <= 1 + 1e-6 for v in values)
    assert float(logged[-1]["projection/surviving/stem.0"]) < 0.99


@pytest.mark.parametrize("projection", [True, False])
def test_disturbance_matrix_script_trains_with_the_runs_projection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   projection: bool) -> None:
    """``scripts/disturbance_matrix.py`` takes the projection callback from the configs' trainer callbacks (a
    method's own ``configure_callbacks`` has none since the callbacks moved to the configs), so a DI-NAS
    checkpoint's matrix is trained with its P; the ``projection=False`` ablation gets the plain step."""
    from nas_lightning.cli import NASLightningCLI

    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)
    configs = ["configs/dinas/nb201_synthetic.yaml"]
    if not projection:
        (tmp_path / "ablation.yaml").write_text("model:\n  init_args:\n    projection: false\n")
        configs.append(str(tmp_path / "ablation.yaml"))
    cli = NASLightningCLI([a for c in configs for a in ("-c", c)] + ["--trainer.logger=false"], run=False)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, ProjectionMatrixUpdate)]
    torch.save({"state_dict": cli.model.state_dict(), "callbacks": {cb.state_key: cb.state_dict()}},
               tmp_path / "last.ckpt")
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(root / "scripts" / "disturbance_matrix.py"),
                           *[a for c in configs for a in ("-c", c)], "--ckpt_path", str(tmp_path / "last.ckpt"),
                           "--archs", "2"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ("projected with the checkpoint's P" in proc.stdout) == projection, proc.stdout
    assert ("plain optimiser step" in proc.stdout) != projection


class Crash(pl.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def test_crash_and_resume_gives_the_uninterrupted_P(tmp_path: Path) -> None:
    """Killed after step 4 of 2 x 4 (alpha decaying with progress, so the step count matters too): the
    resumed run's P and weights equal the uninterrupted run's."""
    data = _batches(4)

    def run(root: Path, extra: list[pl.Callback], ckpt_path: str | None = None):
        model, projection = _model(), ProjectionMatrixUpdate(alpha=1e-2, alpha_decay=True, max_patches=4)
        _trainer(root, [projection, *extra], max_epochs=2, enable_checkpointing=bool(extra)).fit(
            model, DataLoader(data, batch_size=None), ckpt_path=ckpt_path)
        return model, projection

    pl.seed_everything(0)
    full_model, full = run(tmp_path / "full", [])
    pl.seed_everything(0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "a", [ckpt, Crash(at_step=4)])
    (path,) = (tmp_path / "ckpt").glob("*step=4.ckpt")
    first = torch.load(path, weights_only=False)["callbacks"]
    (state,) = [v for k, v in first.items() if k.startswith("ProjectionMatrixUpdate")]
    assert state["updates"] == 4
    pl.seed_everything(99)  # a resumed process starts from other global RNG state
    resumed_model, resumed = run(tmp_path / "b", [], ckpt_path=str(path))

    assert full.updates == resumed.updates == 8
    assert set(full.P) == set(resumed.P) and set(state["P"]) <= set(full.P)
    changed = [n for n in state["P"] if not torch.allclose(full.P[n], state["P"][n])]
    assert changed, "the second epoch did not change P, so the comparison would prove nothing"
    for name, P in full.P.items():
        torch.testing.assert_close(resumed.P[name], P, rtol=1e-5, atol=1e-6, msg=name)
    for (name, p), q in zip(full_model.supernet.named_parameters(), resumed_model.supernet.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_ddp_ranks_agree_and_match_single_process_accumulation(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    for mode in ("ddp", "single"):
        proc = subprocess.run([sys.executable, str(SCRIPT), mode, str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"ddp_rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single_rank0.pt")
    assert r0["archs"] == r1["archs"] and single["archs"][::2] == r0["archs"]
    assert r0["updates"] == single["updates"] == 4
    assert len(r0["P"]) > 10 and set(r0["P"]) == set(r1["P"]) == set(single["P"])
    for name, P in r0["P"].items():
        assert torch.equal(r1["P"][name], P), f"ranks disagree on P[{name}]"
        torch.testing.assert_close(single["P"][name], P, rtol=1e-4, atol=1e-4, msg=name)
    for name, p in single["params"].items():
        torch.testing.assert_close(r0["params"][name], p, rtol=1e-4, atol=1e-5, msg=name)
