"""WPNAS HyperNet weak weight sharing (arXiv:2203.02086, section 3.3, eq. 2): effective weights W * offset, the
offset cropped top-left for smaller kernels, on every path ``supernet(x, arch)`` takes (training, inherited
evaluation, export)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn
from typing_extensions import override

from nas_lightning.evaluation.inherited import evaluate_archs
from nas_lightning.spaces import (
    Arch,
    ChainSpace,
    DartsSpace,
    DeeperInsightsSpace,
    MobileNetSpace,
    NB201Space,
    SearchSpace,
)
from nas_lightning.spaces.base import Decision
from nas_lightning.supernet.copies import CopyPicker, install_copies
from nas_lightning.supernet.hypernet import (
    HyperNet,
    active_convs,
    effective_weights,
    hypernet_sites,
    install_hypernet,
    is_spatial_conv,
)

SPACES = {
    "nb201": lambda: NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8),
    "chain": lambda: ChainSpace(num_layers=3, ops=("nor_conv_3x3", "nor_conv_5x5", "skip_connect"), C=4,
                                num_classes=5, in_channels=1, input_size=8),
    "mobilenet": lambda: MobileNetSpace("small", width_mult=0.25, num_classes=5, in_channels=1, input_size=8,
                                        depths=[1, 2, 1, 1, 1, 1]),
    "deeper_insights": lambda: DeeperInsightsSpace(C=4, num_cells=2, num_classes=5, in_channels=1, input_size=8),
}
K_MAX = {"mobilenet": 7}


def _with_hypernet(name: str, frozen: bool = False, seed: int = 0) -> tuple[SearchSpace, nn.Module, HyperNet]:
    torch.manual_seed(0)
    space = SPACES[name]()
    supernet = space.build_supernet()
    hypernet = HyperNet(space, supernet, hidden=8, k_max=K_MAX.get(name, 5), frozen=frozen, seed=seed)
    install_hypernet(supernet, hypernet)
    return space, supernet, hypernet


def _perturb(hypernet: HyperNet, seed: int = 3) -> None:
    """A trained-looking HyperNet: a non-zero head, so the offsets depend on the arch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hypernet.head.weight.copy_(torch.randn(hypernet.head.weight.shape, generator=gen) * 0.3)
        hypernet.head.bias.copy_(torch.randn(hypernet.head.bias.shape, generator=gen) * 0.1)


def _two_archs_sharing_an_op(space: SearchSpace, decision: int, op: str) -> tuple:
    """Two different archs that both pick ``op`` at ``decision``."""
    c = space.decisions[decision].choices.index(op)
    a = [0] * space.num_decisions
    b = [len(d.choices) - 1 for d in space.decisions]
    a[decision] = b[decision] = c
    return space.arch(a), space.arch(b)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_offsets_of_ones_change_nothing_bit_for_bit(name: str) -> None:
    space, supernet, hypernet = _with_hypernet(name)
    torch.manual_seed(0)
    plain = space.build_supernet()  # same seed, same weights, no HyperNet
    assert all(torch.equal(p, q) for p, q in zip(plain.state_dict().values(), supernet.state_dict().values()))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, *space.input_shape, generator=gen)
    for arch in space.sample_many(3, gen):
        assert torch.equal(hypernet.offsets(arch), torch.ones(space.num_decisions, hypernet.k_max, hypernet.k_max))
        for mode in (True, False):
            supernet.train(mode)
            plain.train(mode)
            assert torch.equal(supernet(x, arch), plain(x, arch))


@pytest.mark.parametrize("frozen", [False, True])
def test_archs_sharing_an_op_get_different_weights_with_the_hypernet_and_equal_ones_without(frozen: bool) -> None:
    space, supernet, hypernet = _with_hypernet("nb201", frozen=frozen)
    if not frozen:
        _perturb(hypernet)
    a, b = _two_archs_sharing_an_op(space, 3, "nor_conv_3x3")
    path = "body.0.edges.3.candidates.nor_conv_3x3.1"  # the conv of edge 3<-0 in the first cell
    wa, wb = effective_weights(supernet, a, [path])[0], effective_weights(supernet, b, [path])[0]
    assert not torch.allclose(wa, wb)
    base = supernet.get_submodule(path).weight
    torch.testing.assert_close(wa, base * hypernet.offsets(a)[3, :3, :3])
    plain = space.build_supernet()
    pa, pb = effective_weights(plain, a, [path])[0], effective_weights(plain, b, [path])[0]
    assert torch.equal(pa, pb) and torch.equal(pa, plain.get_submodule(path).weight)


def test_cropping_top_left_by_hand() -> None:
    """Head bias = 0, 1, ..., 24 row by row and head weight 0: every decision's offset is 1 + that 5x5 grid. A 3x3
    conv takes rows 0-2, columns 0-2; a 5x5 conv the whole grid; a 1x1 conv is not searchable (unchanged)."""
    space = ChainSpace(num_layers=3, ops=("nor_conv_1x1", "nor_conv_3x3", "nor_conv_5x5"), C=2, num_classes=3,
                       in_channels=1, input_size=8)
    supernet = space.build_supernet()
    hypernet = HyperNet(space, supernet, hidden=4, k_max=5)
    install_hypernet(supernet, hypernet)
    with torch.no_grad():
        hypernet.head.bias.copy_(torch.arange(25.0))
    arch = space.decode("|nor_conv_3x3|nor_conv_5x5|nor_conv_1x1|")
    w3 = supernet.get_submodule("body.0.candidates.nor_conv_3x3.1").weight
    w5 = supernet.get_submodule("body.1.candidates.nor_conv_5x5.1").weight
    w1 = supernet.get_submodule("body.2.candidates.nor_conv_1x1.1").weight
    e3, e5, e1 = effective_weights(supernet, arch, ["body.0.candidates.nor_conv_3x3.1",
                                                    "body.1.candidates.nor_conv_5x5.1",
                                                    "body.2.candidates.nor_conv_1x1.1"])
    # by hand: position (r, c) of the grid holds 5r + c, so its offset is 1 + 5r + c
    assert e3[1, 0, 0, 0] == w3[1, 0, 0, 0] * 1
    assert e3[0, 1, 2, 1] == w3[0, 1, 2, 1] * 12  # 1 + 5*2 + 1
    assert e3[1, 1, 1, 2] == w3[1, 1, 1, 2] * 8  # 1 + 5*1 + 2
    assert e5[0, 0, 4, 4] == w5[0, 0, 4, 4] * 25  # 1 + 5*4 + 4
    assert e5[1, 0, 3, 0] == w5[1, 0, 3, 0] * 16  # 1 + 5*3 + 0
    grid3 = torch.tensor([[1.0, 2, 3], [6, 7, 8], [11, 12, 13]])
    torch.testing.assert_close(e3, w3 * grid3, rtol=0, atol=0)
    assert torch.equal(e1, w1)
    # and nothing stays swapped after the forward pass
    assert supernet.get_submodule("body.0.candidates.nor_conv_3x3.1").weight is w3 and isinstance(w3, nn.Parameter)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_export_carries_the_effective_weights(name: str) -> None:
    space, supernet, hypernet = _with_hypernet(name)
    _perturb(hypernet)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, *space.input_shape, generator=gen)
    for arch in space.sample_many(3, gen):
        net = supernet.export(arch)
        # under one grad mode: CPU LSTM kernels with and without autograd differ in the last bits of the offsets
        with torch.no_grad():
            for mode in (True, False):
                supernet.train(mode)
                net.train(mode)
                torch.testing.assert_close(net(x), supernet(x, arch), rtol=0, atol=1e-6)
        # without the offsets the stand-alone network computes something else
        plain = space.build_network(arch)
        plain.load_state_dict(supernet.state_dict(), strict=False)
        plain.train(), supernet.train()  # batch statistics: in eval mode these tiny inputs give near-constant logits
        # (an arch whose ops have no spatial conv, e.g. only 1x1 convs and pools, has nothing to modulate)
        assert torch.allclose(plain(x), supernet(x, arch), atol=1e-4) == (not active_convs(supernet, arch))


def test_inherited_evaluation_runs_the_effective_weights() -> None:
    space, supernet, hypernet = _with_hypernet("nb201")
    _perturb(hypernet)
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(8, *space.input_shape, generator=gen), torch.randint(0, 5, (8,), generator=gen))
               for _ in range(2)]
    archs = space.sample_many(3, gen)
    totals = evaluate_archs(supernet, archs, batches)
    stacked = evaluate_archs(supernet, archs, batches, max_batches_per_forward=2)  # vmap over the batches
    torch.testing.assert_close(stacked.loss, totals.loss)
    for i, arch in enumerate(archs):
        net = supernet.export(arch)
        net.train()  # batch statistics, as the evaluator's default
        loss = sum(nn.functional.cross_entropy(net(x), y, reduction="sum") for x, y in batches)
        torch.testing.assert_close(totals.loss[i].float(), loss.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frozen", [False, True])
def test_gradients_reach_the_base_weights_and_the_hypernet_unless_frozen(frozen: bool) -> None:
    """eq. 2's chain rule: dL/dW_base = offset * dL/dW_eff, with dL/dW_eff taken on the exported network."""
    space, supernet, hypernet = _with_hypernet("chain", frozen=frozen)
    if not frozen:
        _perturb(hypernet)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, *space.input_shape, generator=gen)
    arch = space.decode("|nor_conv_5x5|nor_conv_3x3|skip_connect|")
    net = supernet.export(arch)
    supernet(x, arch).logsumexp(1).sum().backward()
    net(x).logsumexp(1).sum().backward()
    offsets = hypernet.offsets(arch).detach()
    for path, d, k in (("body.0.candidates.nor_conv_5x5.1", 0, 5), ("body.1.candidates.nor_conv_3x3.1", 1, 3)):
        base_grad = supernet.get_submodule(path).weight.grad
        eff_grad = net.get_submodule(path).weight.grad
        assert base_grad is not None and base_grad.abs().sum() > 0
        torch.testing.assert_close(base_grad, eff_grad * offsets[d, :k, :k], rtol=1e-5, atol=1e-7)
    grads = [p.grad for p in hypernet.parameters()]
    if frozen:
        assert all(g is None for g in grads) and not any(p.requires_grad for p in hypernet.parameters())
    else:
        assert all(g is not None for g in [hypernet.head.weight.grad, hypernet.lstm.weight_ih_l0.grad])
        assert hypernet.head.weight.grad.abs().sum() > 0 and hypernet.lstm.weight_ih_l0.grad.abs().sum() > 0


def test_a_fresh_hypernet_learns_from_its_first_step() -> None:
    """Offsets start at one (zero head), yet the head's gradient is not zero, so training moves them."""
    space, supernet, hypernet = _with_hypernet("chain")
    x = torch.randn(4, *space.input_shape, generator=torch.Generator().manual_seed(6))
    arch = space.decode("|nor_conv_5x5|nor_conv_3x3|skip_connect|")
    supernet(x, arch).logsumexp(1).sum().backward()
    assert hypernet.head.weight.grad.abs().sum() > 0 and hypernet.head.bias.grad.abs().sum() > 0


def test_hypernet_is_checkpointed_with_the_supernet_and_seeded() -> None:
    space, supernet, hypernet = _with_hypernet("nb201", frozen=True, seed=7)
    assert any(k.startswith("hypernet.") for k in supernet.state_dict())
    _, other, _ = _with_hypernet("nb201", frozen=True, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(supernet.state_dict().values(), other.state_dict().values()))
    _, third, _ = _with_hypernet("nb201", frozen=True, seed=8)
    assert not torch.equal(third.hypernet.head.weight, hypernet.head.weight)
    # the stand-alone export has no HyperNet keys
    arch = space.sample(torch.Generator().manual_seed(0))
    assert not any(k.startswith("hypernet.") for k in supernet.export(arch).state_dict())


def test_darts_edges_take_the_offset_of_the_op_decision_their_parents_assign() -> None:
    """An edge (node, src) runs the op of ``op_a`` when the ``parents`` pair starts at src, of ``op_b`` when it
    ends there: exactly the stand-alone network's spatial convs are modulated, each by its decision's offset."""
    space = DartsSpace(C=4, layers=3, num_classes=5, in_channels=1, input_size=8)
    supernet = space.build_supernet()
    hypernet = HyperNet(space, supernet, hidden=4, frozen=True)
    install_hypernet(supernet, hypernet)
    x = torch.randn(4, *space.input_shape, generator=torch.Generator().manual_seed(8))
    names = [d.name for d in space.decisions]
    for arch in space.sample_many(4, torch.Generator().manual_seed(9)):
        net = supernet.export(arch)
        expected = {n for n, m in net.named_modules() if ".edges." in n and is_spatial_conv(m)}
        active = dict(active_convs(supernet, arch))
        by_module = {supernet.get_submodule(n): n for n in expected}
        assert {by_module[conv] for conv in active} == expected and len(active) == len(expected)
        genotype = space.genotype(arch)
        for conv, d in active.items():
            path = by_module[conv]  # body.<i>.edges.<node><-<src>.candidates.<op>...
            node, src = (int(v) for v in path.split(".")[3].split("<-"))
            cell_type = "reduce" if supernet.body[int(path.split(".")[1])].reduction else "normal"
            gene = genotype[cell_type][node - 2]
            side = "op_a" if gene.a.parent == src else "op_b"
            assert names[d] == f"{cell_type}.{node}.{side}"
        with torch.no_grad():
            torch.testing.assert_close(net.train()(x), supernet.train()(x, arch), rtol=0, atol=1e-6)


def test_bad_input_is_refused_with_a_clear_error() -> None:
    class Bare(SearchSpace):
        in_channels, input_size, num_classes, supernet_bn_affine = 1, 8, 2, False

        @property
        @override
        def decisions(self) -> list[Decision]:
            return [Decision("only", ("a", "b"))]

        @override
        def format(self, choices: Sequence[str]) -> str:
            return choices[0]

        @override
        def parse(self, text: str) -> list[str]:
            return [text]

    with pytest.raises(LookupError, match=r"searchable convs of Bare.*HYPERNET_SITES\.register\(Bare\)"):
        hypernet_sites(Bare(), nn.Module())
    mobilenet = SPACES["mobilenet"]()
    with pytest.raises(ValueError, match=r"7x7 kernel.*k_max=7"):
        HyperNet(mobilenet, mobilenet.build_supernet(), k_max=5)
    pools = ChainSpace(num_layers=2, ops=("nor_conv_1x1", "avg_pool_3x3"), C=4, num_classes=3, input_size=8)
    with pytest.raises(ValueError, match="no searchable conv"):
        HyperNet(pools, pools.build_supernet())
    space, supernet, hypernet = _with_hypernet("chain")
    with pytest.raises(RuntimeError, match="already has a HyperNet"):
        install_hypernet(supernet, hypernet)
    with pytest.raises(ValueError, match="another space"):
        install_hypernet(SPACES["nb201"]().build_supernet(), HyperNet(space, space.build_supernet()))
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        hypernet(torch.zeros(1, 2, dtype=torch.long))


def test_weight_copies_get_the_offset_on_the_copy_they_pick() -> None:
    """Reduced sharing / DC-NAS copies and the HyperNet compose: the picked copy's weight times the offset."""

    class ByLayer1(CopyPicker):
        """Layer 0 runs copy 0 or 1 by layer 1's choice."""

        @property
        @override
        def num_copies(self) -> dict[str, int]:
            return {"body.0": 2}

        @override
        def __call__(self, arch: Arch) -> dict[str, int]:
            return {"body.0": arch.indices[1] % 2}

    space = SPACES["chain"]()
    torch.manual_seed(0)
    supernet = space.build_supernet()
    install_copies(supernet, ByLayer1())
    with torch.no_grad():
        for p in supernet.weight_copies.parameters():
            p.mul_(-2.0)  # copy 1 differs from copy 0
    hypernet = HyperNet(space, supernet, hidden=4, frozen=True)
    install_hypernet(supernet, hypernet)
    path = "body.0.candidates.nor_conv_3x3.1"
    copy1 = supernet.weight_copies["body/0"].extra[0].get_submodule("candidates.nor_conv_3x3.1").weight
    x = torch.randn(4, *space.input_shape, generator=torch.Generator().manual_seed(7))
    for layer1, base in ((0, supernet.get_submodule(path).weight), (1, copy1)):
        arch = space.arch([0, layer1, 2])
        weight = effective_weights(supernet, arch, [path])[0]
        torch.testing.assert_close(weight, base * hypernet.offsets(arch)[0, :3, :3], rtol=0, atol=0)
        net = supernet.export(arch)
        torch.testing.assert_close(net.state_dict()[path + ".weight"], weight, rtol=0, atol=0)
        with torch.no_grad():
            torch.testing.assert_close(net.train()(x), supernet.train()(x, arch), rtol=0, atol=1e-6)
