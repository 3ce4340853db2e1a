"""The DARTS cell space (arXiv:1806.09055) against the published DARTS numbers and hand counts."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from scipy import stats

from nas_lightning.spaces.base import ArchFormatError
from nas_lightning.spaces.darts import DARTS_PRIMITIVES, DARTS_V2_GENOTYPE, DartsSpace, Edge, Gene, ParentPair
from nas_lightning.supernet import OPS


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Many tiny convs: with the 2 shared CPU cores busy, intra-op threads spin-wait and run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**kwargs: object) -> DartsSpace:
    """C=4, 3 layers (cell 0 normal, cells 1 and 2 reduction), 1 x 8 x 8 inputs."""
    return DartsSpace(**{"C": 4, "layers": 3, "num_classes": 5, "in_channels": 1, "input_size": 8, **kwargs})


def all_none(space: DartsSpace) -> str:
    edges = ", ".join(f"('none', {j})" for _ in range(4) for j in (0, 1))
    return f"Genotype(normal=[{edges}], normal_concat=[2, 3, 4, 5], reduce=[{edges}], reduce_concat=[2, 3, 4, 5])"


# --- the arch string ------------------------------------------------------------------------------
def test_sampled_strings_round_trip_and_are_unique() -> None:
    space = DartsSpace()
    archs = space.sample_many(500, torch.Generator().manual_seed(0))
    for arch in archs:
        again = space.decode(str(arch))
        assert again == arch and str(again) == str(arch)
    # one canonical string per arch: as many distinct strings as distinct archs
    assert len({str(a) for a in archs}) == len(set(archs))
    assert len(set(archs)) > 490


def test_published_variants_decode_to_one_canonical_arch() -> None:
    space = DartsSpace()
    arch = space.decode(DARTS_V2_GENOTYPE)
    # DARTS lists node 4's edges as ('sep_conv_3x3', 1), ('skip_connect', 0); the canonical form sorts by parent.
    assert str(arch).startswith(
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5]"
    )
    assert space.to_dict(arch)["normal.5.parents"] == "0,2"
    assert space.to_dict(arch)["reduce.3.parents"] == "1,2"
    # pt.darts writes nested per-node lists and range(2, 6)
    nested = (
        "Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
        "[('sep_conv_3x3', 1), ('skip_connect', 0)], [('skip_connect', 0), ('dil_conv_3x3', 2)]], "
        "normal_concat=range(2, 6), "
        "reduce=[[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [('skip_connect', 2), ('max_pool_3x3', 1)], "
        "[('max_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 2), ('max_pool_3x3', 1)]], "
        "reduce_concat=range(2, 6))"
    )
    assert space.decode(nested) == arch and str(space.decode(nested)) == str(arch)


V2 = DARTS_V2_GENOTYPE
MALFORMED = {
    "same parent twice": (V2.replace("('sep_conv_3x3', 1)", "('sep_conv_3x3', 0)", 1), "parents 0 and 0"),
    "parent out of range": (V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "parents 0 and 5"),
    "unknown op": (V2.replace("dil_conv_3x3", "conv_7x1_1x7"), "conv_7x1_1x7"),
    "concat": (V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[4, 5]"), r"\[4, 5\]"),
    "edge count": (V2.replace(", ('dil_conv_3x3', 2)", ""), "lists 7 edges"),
    "not a genotype": ("[('sep_conv_3x3', 0)]", "Genotype"),
    "code is not run": ("Genotype(normal=__import__('os').getcwd(), normal_concat=[2, 3, 4, 5], reduce=[], "
                        "reduce_concat=[2, 3, 4, 5])", "literal"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_strings_are_rejected(case: str) -> None:
    text, message = MALFORMED[case]
    with pytest.raises(ArchFormatError, match=message):
        DartsSpace().decode(text)


def test_genotype_and_cell_edges_are_typed() -> None:
    """The network gets typed genes from the space; no parent pair is parsed back from its choice name."""
    space = DartsSpace()
    arch = space.decode(DARTS_V2_GENOTYPE)
    genotype = space.genotype(arch)
    assert genotype["normal"][2] == Gene(Edge("skip_connect", 0), Edge("sep_conv_3x3", 1))
    assert genotype["reduce"][3] == Gene(Edge("max_pool_3x3", 1), Edge("skip_connect", 2))
    assert all(type(e.parent) is int for genes in genotype.values() for gene in genes for e in gene)
    pair = ParentPair(0, 2)
    assert str(pair) == "0,2" == space.to_dict(arch)["normal.5.parents"] and pair == (0, 2)
    assert space.cell_edges("normal", arch) == {
        (2, 0): ("sep_conv_3x3",), (2, 1): ("sep_conv_3x3",), (3, 0): ("sep_conv_3x3",), (3, 1): ("sep_conv_3x3",),
        (4, 0): ("skip_connect",), (4, 1): ("sep_conv_3x3",), (5, 0): ("skip_connect",), (5, 2): ("dil_conv_3x3",),
    }
    every = space.cell_edges("reduce")
    assert list(every) == [(n, j) for n in (2, 3, 4, 5) for j in range(n)] and set(every.values()) == {DARTS_PRIMITIVES}


# --- decisions and sampling -----------------------------------------------------------------------
def test_parent_pair_decisions_cover_every_pair_once() -> None:
    space = DartsSpace()
    assert space.num_decisions == 24
    hand = {2: ["0,1"], 3: ["0,1", "0,2", "1,2"], 4: ["0,1", "0,2", "0,3", "1,2", "1,3", "2,3"]}
    for cell in ("normal", "reduce"):
        for node in (2, 3, 4, 5):
            pairs = space.decisions[[d.name for d in space.decisions].index(f"{cell}.{node}.parents")].choices
            assert len(pairs) == len(set(pairs)) == math.comb(node, 2)
            as_sets = {frozenset(map(int, p.split(","))) for p in pairs}
            assert as_sets == {frozenset((a, b)) for a in range(node) for b in range(node) if a < b}
            if node in hand:
                assert list(pairs) == hand[node]
            for op in ("op_a", "op_b"):
                d = space.decisions[[d.name for d in space.decisions].index(f"{cell}.{node}.{op}")]
                assert d.choices == DARTS_PRIMITIVES
    assert space.num_archs == (8**8 * 1 * 3 * 6 * 10) ** 2


def test_sampling_is_uniform_and_independent_per_decision() -> None:
    space = DartsSpace()
    n = 12_000
    idx = space.to_tensor(space.sample_many(n, torch.Generator().manual_seed(3)))
    for k, d in enumerate(space.decisions):
        counts = torch.bincount(idx[:, k], minlength=len(d.choices)).numpy()
        if len(d.choices) > 1:
            assert stats.chisquare(counts).pvalue > 1e-4, (d.name, counts)
    # WPNAS: the parent pair and the ops of a node are independent decisions
    names = [d.name for d in space.decisions]
    pair, op = idx[:, names.index("normal.5.parents")], idx[:, names.index("normal.5.op_a")]
    table = torch.zeros(10, 8, dtype=torch.long).index_put_((pair, op), torch.ones(n, dtype=torch.long), True)
    assert stats.chi2_contingency(table.numpy()).pvalue > 1e-4


# --- the network ----------------------------------------------------------------------------------
def randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so that copying them matters."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("affine", [False, True])
def test_supernet_path_equals_exported_network(affine: bool) -> None:
    torch.manual_seed(0)
    space = tiny(supernet_bn_affine=affine)
    supernet = space.build_supernet()
    randomise(supernet, 1)
    archs = [*space.sample_many(3, torch.Generator().manual_seed(5)), space.decode(all_none(space))]
    x = torch.randn(6, 1, 8, 8)
    for arch in archs:
        net = supernet.export(arch)
        for train in (False, True):
            supernet.train(train)
            net.train(train)
            torch.testing.assert_close(net(x), supernet(x, arch), rtol=1e-5, atol=1e-6)
        assert net(x).shape == (6, 5)


def test_stand_alone_holds_only_the_selected_edges() -> None:
    space = tiny()
    supernet = space.build_supernet()
    for cell in supernet.body:
        assert len(cell.edges) == 14 and all(len(ops.candidates) == 8 for ops in cell.edges.values())
    arch = space.decode(DARTS_V2_GENOTYPE)
    net = space.build_network(arch)
    for cell in net.body:
        genes = ["2<-0", "2<-1", "3<-0", "3<-1", "4<-0", "4<-1", "5<-0", "5<-2"] if not cell.reduction else \
            ["2<-0", "2<-1", "3<-1", "3<-2", "4<-0", "4<-2", "5<-1", "5<-2"]
        assert sorted(cell.edges) == genes and all(len(ops.candidates) == 1 for ops in cell.edges.values())
    with pytest.raises(ValueError, match="fixed to"):
        net(torch.zeros(1, 1, 8, 8), space.decode(all_none(space)))


def test_unselected_ops_get_no_gradient() -> None:
    space = tiny(supernet_bn_affine=True)
    supernet = space.build_supernet().train()
    for arch in space.sample_many(3, torch.Generator().manual_seed(11)):
        supernet.zero_grad(set_to_none=True)
        supernet(torch.randn(4, 1, 8, 8), arch).square().sum().backward()
        choice = space.to_dict(arch)
        selected = set()
        for cell in ("normal", "reduce"):
            for node in (2, 3, 4, 5):
                a, b = choice[f"{cell}.{node}.parents"].split(",")
                selected |= {(cell, f"{node}<-{a}", choice[f"{cell}.{node}.op_a"]),
                             (cell, f"{node}<-{b}", choice[f"{cell}.{node}.op_b"])}
        for name, p in supernet.named_parameters():
            parts = name.split(".")  # body.<cell>.edges.<node><-<parent>.candidates.<op>...
            if parts[0] == "body" and parts[2] == "edges":
                cell = "reduce" if supernet.body[int(parts[1])].reduction else "normal"
                assert (p.grad is not None) == ((cell, parts[3], parts[5]) in selected), name
            else:  # stem, preprocessing, classifier
                assert p.grad is not None, name


# --- cost -----------------------------------------------------------------------------------------
def test_darts_v2_has_the_published_parameter_count() -> None:
    """The DARTS evaluation net (C=36, 20 layers, CIFAR-10) logs "param size = 3.349342MB" (cnn/train.py),
    counted by utils.count_parameters_in_MB, which skips parameters named "auxiliary": the count without
    the auxiliary head, which is the network built here (the paper rounds it to 3.3M, Table 1)."""
    space = DartsSpace(C=36, layers=20, num_classes=10, in_channels=3, input_size=32)
    net = space.build_network(space.decode(DARTS_V2_GENOTYPE))
    assert sum(p.numel() for p in net.parameters()) == 3_349_342


@pytest.mark.parametrize("op,params", [
    # C=16, affine BN (2C): sep = 2 x (k*k*C + C*C + 2C); dil = k*k*C + C*C + 2C; factorized reduce = 2 x C*C/2 + 2C
    ("sep_conv_3x3", 2 * (9 * 16 + 256 + 32)), ("sep_conv_5x5", 2 * (25 * 16 + 256 + 32)),
    ("dil_conv_3x3", 9 * 16 + 256 + 32), ("dil_conv_5x5", 25 * 16 + 256 + 32),
    ("skip_connect", 2 * 16 * 8 + 32), ("max_pool_3x3", 0), ("avg_pool_3x3", 0), ("none", 0),
])
def test_op_parameter_counts_and_strides(op: str, params: int) -> None:
    x = torch.randn(2, 16, 8, 8)
    strided = OPS.get(op)(16, 16, 2, True)
    assert sum(p.numel() for p in strided.parameters()) == params
    assert strided(x).shape == (2, 16, 4, 4)
    assert OPS.get(op)(16, 16, 1, True)(x).shape == x.shape


def test_flops_match_a_hand_count() -> None:
    """All-'none' cells leave the stem, the preprocessing 1x1 convs and the classifier (2 FLOPs a MAC):
    stem 1->12 3x3 at 8x8; cell 0 (C=4): 12->4, 12->4 at 8x8; cell 1 (reduce, C=8): 12->8, 16->8 at 8x8;
    cell 2 (reduce, C=16): FactorizedReduce 16->2x8 at 4x4 output, 32->16 at 4x4; linear 64->5."""
    space = tiny()
    macs = 1 * 12 * 9 * 64 + 2 * 12 * 4 * 64 + (12 + 16) * 8 * 64 + 2 * 16 * 8 * 16 + 32 * 16 * 16 + 64 * 5
    none = space.decode(all_none(space))
    params, flops = space.cost(none)
    assert flops == 2 * macs
    # one sep_conv_3x3 in the normal cell (cell 0, C=4, 8x8): 2 x (depthwise 9*4 + pointwise 4*4) MACs per pixel
    one_sep = space.decode(all_none(space).replace("('none', 0)", "('sep_conv_3x3', 0)", 1))
    assert space.cost(one_sep) == (params + 2 * (9 * 4 + 4 * 4 + 2 * 4), flops + 2 * 64 * 2 * (9 * 4 + 4 * 4))
