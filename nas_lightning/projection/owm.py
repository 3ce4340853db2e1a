"""Orthogonal gradient projection of shared weights: DI-NAS (Niu et al., "Disturbance-immune Weight
Sharing for Neural Architecture Search", arXiv:2003.13089), eqs. 6-8, after the orthogonal weight
modification (OWM) of Zeng et al. 2019 (arXiv:1810.01256). The paper text lost its formulas; the ones
below follow its description and OWM (docs/design_choices.md, "DI-NAS").

A layer's weight W is read as a matrix (out x d): a Linear as it is, a Conv2d reshaped to
``out x C_in*k*k`` (each output position is W times one input patch). Every such weight owns a
projection matrix P (d x d, fp32, P_0 = I):

- eq. 6: W <- W - lr * (G @ P). With momentum, weight decay or an adaptive optimiser the step actually
  applied is not -lr * G, so what is projected is the applied update: W <- W_old + (W_new - W_old) @ P
  after the optimiser's step (``project_layer_update``; ``OrthogonalProjector``). ``project_gradient``
  is the product with P of any (out, d) matrix: a gradient or an update.
- eq. 7 (closed form): P = I - A^T (A A^T + alpha I)^-1 A = alpha (A^T A + alpha I)^-1, where A (n x d)
  stacks the input features seen before. ``closed_form``. An absolute alpha is not scale-free: scaling a
  layer's inputs by c acts like alpha / c^2. ``energy_normalised`` makes it relative to the layer's feature
  energy (docs/design_choices.md, "DI-NAS").
- eq. 8 (recursive form, Woodbury): per feature x, k = P x / (alpha + x^T P x); P <- P - k x^T P.
  ``rank_one_update``. ``woodbury_update`` folds n features at once with the block Woodbury identity,
  P <- P - P X^T (alpha I + X P X^T)^-1 X P, one linear solve per call; both equal eq. 7 (tests).

Two layout choices of ours, so that Theorem 4.1 (the output on seen inputs moves by O(alpha)) holds
for every layer the supernets contain:
- A bias is part of the weight: [W | b] acts on [x; 1], so the feature gets a trailing 1 and P is
  (d+1) x (d+1). Projecting W alone would leave the bias free to shift every seen output.
- A grouped (or depthwise) conv is ``groups`` independent weights, one per group of output channels,
  each seeing only its group's input channels: P is stacked as (groups, d_g, d_g). Every function
  here works on such leading batch dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

#: The layer types whose weight is read as a matrix (out x d). Other modules are not projected.
PROJECTABLE: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerLayout:
    """How a layer's weight is read as ``groups`` matrices (out/groups x dim)."""

    groups: int
    dim: int  # per group, the bias column included
    has_bias: bool

    @classmethod
    def of(cls, module: nn.Module) -> LayerLayout:
        if not isinstance(module, PROJECTABLE):
            raise TypeError(f"orthogonal projection supports {[t.__name__ for t in PROJECTABLE]}, "
                            f"got {type(module).__name__}")
        if isinstance(module, nn.Conv2d) and type(module).forward is not nn.Conv2d.forward:
            # e.g. timm's Conv2dSame pads inside forward: its input is not what the kernel sees.
            raise TypeError(f"{type(module).__name__} overrides Conv2d.forward, so its patches cannot be read "
                            "from its input; exclude it (layers='linear') or use a plain nn.Conv2d")
        has_bias = module.bias is not None and module.bias.requires_grad
        groups = module.groups if isinstance(module, nn.Conv2d) else 1
        weight = module.weight
        return cls(groups=groups, dim=weight[0].numel() + int(has_bias), has_bias=has_bias)

    def identity(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """P_0 = I: (dim, dim), or (groups, dim, dim) for a grouped conv."""
        eye = torch.eye(self.dim, device=device, dtype=torch.float32)
        return eye if self.groups == 1 else eye.expand(self.groups, self.dim, self.dim).clone()


def project_gradient(grad: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Eq. 6: ``grad`` (out, ...) read as (out, d), times P (d, d), or per group for P (g, d, d).

    Computed in P's dtype (fp32) and returned in ``grad``'s dtype and shape.
    """
    out = grad.shape[0]
    groups, d = (1, P.shape[-1]) if P.dim() == 2 else (P.shape[0], P.shape[-1])
    if out % groups or grad.numel() != out * d:
        raise ValueError(f"gradient of shape {tuple(grad.shape)} does not match a projection of shape {tuple(P.shape)}")
    G = grad.reshape(groups, out // groups, d) if P.dim() == 3 else grad.reshape(out, d)
    return (G.to(P.dtype) @ P).reshape(grad.shape).to(grad.dtype)


def woodbury_update(P: torch.Tensor, X: torch.Tensor, alpha: float) -> torch.Tensor:
    """Fold the feature rows X (..., n, d) into P (..., d, d) at once (block Woodbury form of eq. 8).

    P <- P - P X^T (alpha I + X P X^T)^-1 X P; equivalently P^-1 <- P^-1 + X^T X / alpha, so folding
    A's rows in any grouping from P_0 = I gives eq. 7. One batched solve of the small n x n system
    (in float64: its condition number grows like |x|^2 / alpha); the result is symmetrised.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    X = X.to(P.dtype)
    PXt = P @ X.transpose(-1, -2)  # (..., d, n)
    S = X @ PXt
    S = S + alpha * torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    K = torch.linalg.solve(S.double(), PXt.transpose(-1, -2).double()).to(P.dtype)  # S^-1 X P, as P = P^T
    P = P - PXt @ K
    return 0.5 * (P + P.transpose(-1, -2))


def rank_one_update(P: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 8 for one feature x (d): k = P x / (alpha + x^T P x); P <- P - k x^T P. The reference that
    ``woodbury_update`` is tested against (and OWM's own loop); not used on the hot path."""
    x = x.to(P.dtype)
    Px = P @ x
    k = Px / (alpha + x @ Px)
    return P - torch.outer(k, Px)


def closed_form(A: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 7: P = I - A^T (A A^T + alpha I)^-1 A for the features A (n, d) seen so far."""
    n, d = A.shape
    gram = A @ A.T + alpha * torch.eye(n, dtype=A.dtype, device=A.device)
    return torch.eye(d, dtype=A.dtype, device=A.device) - A.T @ torch.linalg.solve(gram, A)


def alpha_at(alpha0: float, progress: float, decay: bool) -> float:
    """The regulariser alpha of an update made at ``progress`` (fraction of training done, in [0, 1]).

    Without decay: alpha0. With decay, OWM's schedule (its ``1.0 * alpha0 ** lamda``, lamda the fraction
    of training done): alpha0 ** progress, so alpha starts at 1 (the features barely constrain the first
    steps) and falls to alpha0 at the end (docs/design_choices.md, "DI-NAS").
    """
    if alpha0 <= 0 or not math.isfinite(alpha0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha0}")
    if not decay:
        return alpha0
    if alpha0 >= 1:
        raise ValueError(f"alpha_decay=True decays alpha0 ** progress from 1 down to alpha0, so it needs alpha0 < 1, "
                         f"got {alpha0}")
    return alpha0 ** min(max(progress, 0.0), 1.0)


def gradient_matrix(module: nn.Module, layout: LayerLayout) -> torch.Tensor | None:
    """[grad W | grad b] as (out, dim), None if the layer got no gradient (it did not run this step).
    A missing half (e.g. only the bias got a gradient) reads as zeros."""
    w, b = module.weight.grad, module.bias.grad if layout.has_bias else None
    if w is None and b is None:
        return None
    out = module.weight.shape[0]
    w_flat = w.reshape(out, -1) if w is not None else module.weight.new_zeros(out, layout.dim - int(layout.has_bias))
    if not layout.has_bias:
        return w_flat
    b_col = (b if b is not None else module.bias.new_zeros(out)).reshape(out, 1).to(w_flat.dtype)
    return torch.cat([w_flat, b_col], dim=1)


@torch.no_grad()
def project_layer_gradient(module: nn.Module, layout: LayerLayout, P: torch.Tensor) -> bool:
    """Replace the layer's gradients by their projection (eq. 6), in place; False if it had none."""
    G = gradient_matrix(module, layout)
    if G is None:
        return False
    G = project_gradient(G, P)
    w, b = module.weight.grad, module.bias.grad if layout.has_bias else None
    if w is not None:
        w.copy_(G[:, : layout.dim - int(layout.has_bias)].reshape(w.shape))
    if b is not None:
        b.copy_(G[:, -1])
    return True


def energy_normalised(X: torch.Tensor) -> torch.Tensor:
    """The rows X (..., n, d) divided by the root of their mean squared norm (per leading index, i.e. per
    group of a grouped conv): the scale-free alpha.

    Folding X / sqrt(e) at alpha is folding X at alpha * e, e = mean_i |x_i|^2 (eq. 8), so alpha is relative
    to the energy of the features folded in: P no longer changes when a layer's inputs are scaled, and the
    share of the update that survives along a folded row x after one fold is alpha / (alpha + |x|^2 / e)
    (about alpha / (1 + alpha) for rows of similar norm), whatever the layer. Rows that are all zero (a layer
    fed by a zero node) stay zero.
    """
    energy = X.square().sum(-1).mean(-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    return X / energy.clamp_min(torch.finfo(X.dtype).tiny).sqrt()


def weight_matrix(module: nn.Module, layout: LayerLayout) -> torch.Tensor:
    """[W | b] as (out, dim), detached (a copy when a bias is appended)."""
    out = module.weight.shape[0]
    w = module.weight.detach().reshape(out, -1)
    return torch.cat([w, module.bias.detach().reshape(out, 1).to(w.dtype)], dim=1) if layout.has_bias else w


@torch.no_grad()
def project_layer_update(module: nn.Module, layout: LayerLayout, before: torch.Tensor,
                         P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6 on the update an optimiser step applied: [W | b] <- before + ([W | b] - before) @ P, in place.

    ``before`` is ``weight_matrix`` of the layer from before the step. Whatever the optimiser did (momentum,
    weight decay, Adam's scaling) is in the difference, so the applied update is projected. Returns the
    Frobenius norms (0-dim) of the update after and before the projection. Computed in fp32 (fp64 for fp64
    weights).
    """
    dtype = torch.promote_types(before.dtype, torch.float32)  # fp32 at least, fp64 weights stay fp64
    delta = weight_matrix(module, layout).to(dtype) - before.to(dtype)
    projected = project_gradient(delta, P.to(dtype))
    new = before.to(dtype) + projected
    n_w = layout.dim - int(layout.has_bias)
    module.weight.copy_(new[:, :n_w].reshape(module.weight.shape))
    if layout.has_bias:
        module.bias.copy_(new[:, -1])
    return torch.linalg.vector_norm(projected), torch.linalg.vector_norm(delta)
