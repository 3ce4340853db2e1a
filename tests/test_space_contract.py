"""The contract of every registered op and every registered space network (registry-driven, like timm's model
tests): an op added to ``OPS`` or a network added to ``NETWORKS`` is tested here without a new test; a new
space only needs a small configuration in ``conftest.SMALL_SPACES`` (the first test below asks for it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from conftest import SMALL_SPACES
from torch import nn
from typing_extensions import override

from nas_lightning.spaces import (
    CHAIN_OPS,
    NETWORKS,
    ArchFormatError,
    ChainSpace,
    DartsSpace,
    DeeperInsightsSpace,
    MobileNetSpace,
    NATSSizeSpace,
    WPNASMobileNetSpace,
)
from nas_lightning.spaces.base import Decision, SearchSpace
from nas_lightning.spaces.nb201 import NB201Space
from nas_lightning.supernet import OPS, ChainNetwork, Supernet

#: More configurations than ``SMALL_SPACES``: every chain op, affine supernet BNs, both MobileNet variants, the
#: Deeper-Insights space.
EXTRA_SPACES: dict[str, Callable[[], SearchSpace]] = {
    "chain_every_op": lambda: ChainSpace(num_layers=2, ops=CHAIN_OPS, C=4, num_classes=5, in_channels=1,
                                         input_size=8),
    "darts_affine": lambda: DartsSpace(C=4, layers=3, num_classes=5, in_channels=1, input_size=8,
                                       supernet_bn_affine=True),
    "mobilenet_small": lambda: MobileNetSpace("small", width_mult=0.25, num_classes=5, input_size=32,
                                              depths=[2, 1, 2, 1, 2, 1]),
    "mobilenet_large_no_affine": lambda: MobileNetSpace("large", width_mult=0.25, num_classes=5, input_size=32,
                                                        depths=[2, 1, 2, 1, 2, 1], supernet_bn_affine=False),
    "deeper_insights": lambda: DeeperInsightsSpace(C=4, num_cells=2, num_classes=5, in_channels=1, input_size=8),
    "nats_sss": lambda: NATSSizeSpace(channels=(2, 4), num_classes=5, in_channels=1, input_size=8),
    "wpnas_mobilenet": lambda: WPNASMobileNetSpace(width_mult=0.25, num_classes=5, in_channels=1, input_size=8,
                                                   depths=[1, 1, 1, 1, 1, 1, 1]),
}
SPACES = {**SMALL_SPACES, **EXTRA_SPACES}
#: The space classes whose params and FLOPs are additive over the decisions (``SearchSpace.cost_table``).
ADDITIVE_SPACES: tuple[type[SearchSpace], ...] = (ChainSpace, NB201Space, MobileNetSpace, DeeperInsightsSpace)


def randomise_bn(module: nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so that copying them matters."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


# --- the registries ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("space_class", list(NETWORKS), ids=lambda c: c.__name__)
def test_every_registered_space_has_a_small_configuration(space_class: type[SearchSpace]) -> None:
    assert any(isinstance(make(), space_class) for make in SPACES.values()), (
        f"add a small {space_class.__name__} to SMALL_SPACES in tests/conftest.py")


def test_a_space_without_a_network_says_what_to_import() -> None:
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

    with pytest.raises(LookupError, match=r"import nas_lightning\.supernet"):
        Bare().build_supernet()

    class SubChain(ChainSpace):
        pass

    # a subclass of a registered space builds its parent's network
    assert isinstance(SubChain(num_layers=1, C=4, num_classes=3, input_size=8).build_supernet(), ChainNetwork)


# --- every op -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize(("stride", "affine"), [(1, True), (1, False), (2, True)])
def test_op_forward_backward_no_nan(op: str, stride: int, affine: bool) -> None:
    torch.manual_seed(0)
    try:
        module = OPS.get(op)(8, 8, stride, affine)
    except ValueError as e:  # an op may refuse a stride, with a message that says so
        assert stride == 2 and "stride" in str(e)
        return
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    out = module.train()(x)
    assert out.shape == (2, 8, 8 // stride, 8 // stride)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    module.eval()
    assert torch.isfinite(module(x)).all()


# --- every space's network ----------------------------------------------------------------------------------
@pytest.fixture(params=sorted(SPACES))
def space(request: pytest.FixtureRequest) -> SearchSpace:
    return SPACES[request.param]()


def test_networks_name_their_parts_alike(space: SearchSpace) -> None:
    supernet = space.build_supernet()
    net = space.build_network(space.sample(torch.Generator().manual_seed(0)))
    for module in (supernet, net):
        assert isinstance(module, Supernet) and module.space is space
        assert [name for name, _ in module.named_children()] == ["stem", "body", "head"]


def test_round_trip(space: SearchSpace, generator: torch.Generator) -> None:
    for arch in space.sample_many(10, generator):
        assert space.decode(space.encode(arch)) == arch
    with pytest.raises(ArchFormatError):
        space.decode("not an arch")


def test_forward_backward_no_nan_and_unselected_ops_get_no_gradient(
    space: SearchSpace, generator: torch.Generator
) -> None:
    torch.manual_seed(0)
    supernet = space.build_supernet()
    x = torch.randn(4, *space.input_shape, generator=generator)
    for arch in space.sample_many(3, generator):
        supernet.zero_grad(set_to_none=True)
        out = supernet(x, arch)
        assert out.shape == (4, space.num_classes) and torch.isfinite(out).all()
        out.logsumexp(1).sum().backward()
        selected = set(space.build_network(arch).state_dict())
        for name, p in supernet.named_parameters():
            if name not in selected:
                assert p.grad is None, f"unselected parameter {name} received a gradient"
            elif p.grad is not None:  # an op whose node feeds nothing (NAS-Bench-201) gets none either
                assert torch.isfinite(p.grad).all(), name
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in supernet.parameters())


def test_supernet_equals_exported_network(space: SearchSpace, generator: torch.Generator) -> None:
    """Weight-sharing correctness: the supernet on an arch computes what the exported net computes."""
    torch.manual_seed(0)
    supernet = space.build_supernet()
    randomise_bn(supernet, 1)
    x = torch.randn(6, *space.input_shape, generator=generator)
    for _ in range(4):
        arch = space.sample(generator)
        net = supernet.export(arch)
        for mode in (True, False):
            supernet.train(mode)
            net.train(mode)
            torch.testing.assert_close(net(x), supernet(x, arch), rtol=0, atol=1e-6)


def test_cost_is_cached_and_counts_parameters(space: SearchSpace, generator: torch.Generator) -> None:
    arch = space.sample(generator)
    params, flops = space.cost(arch)
    net = space.build_network(arch)
    assert params == sum(p.numel() for p in net.parameters())
    assert flops > 0
    assert space.cost(arch) is space.cost(arch)
    assert (space.params(arch), space.flops(arch)) == (params, flops)


def test_cost_table_equals_the_count_on_the_network(space: SearchSpace, generator: torch.Generator) -> None:
    """Where a space has a cost table, ``cost`` equals the count on the stand-alone network, exactly, over many
    archs: sampled ones and those with the same choice everywhere (NAS-Bench-201: every edge ``none``)."""
    table = space.cost_table()
    assert table is not None or not isinstance(space, ADDITIVE_SPACES)
    if table is None:  # DARTS: tests/test_latency.py shows that no per-decision table can be exact
        return
    uniform = [space.arch([min(k, len(d.choices) - 1) for d in space.decisions])
               for k in range(max(len(d.choices) for d in space.decisions))]
    for arch in [*uniform, *space.sample_many(60, generator)]:
        counted = space.count_cost(arch)
        assert table(arch.indices) == counted, arch.text
        assert space.cost(arch) == counted and space.params(arch) == counted[0] and space.flops(arch) == counted[1]
