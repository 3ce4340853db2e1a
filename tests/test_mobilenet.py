"""The MobileNet (ProxylessNAS / PC-NAS) space and network against numbers counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_lightning.spaces.base import ArchFormatError
from nas_lightning.spaces.mobilenet import MOBILENET_LARGE_OPS, MOBILENET_SMALL_OPS, MobileNetSpace
from nas_lightning.supernet import OPS

LARGE_ONLY = [op for op in MOBILENET_LARGE_OPS if op not in MOBILENET_SMALL_OPS]


def tiny(variant: str = "small", **kwargs: object) -> MobileNetSpace:
    args = {"width_mult": 0.25, "num_classes": 5, "input_size": 32, "depths": [2, 1, 2, 1, 2, 1]} | kwargs
    return MobileNetSpace(variant, **args)  # type: ignore[arg-type]


def all_ops(space: MobileNetSpace, op: str) -> str:
    return "|".join("-".join([op] * d) for d in space.depths)


@pytest.mark.parametrize("variant", ["small", "large"])
def test_round_trip_and_canonical_string(variant: str) -> None:
    space = MobileNetSpace(variant)
    for arch in space.sample_many(50, torch.Generator().manual_seed(0)):
        text = str(arch)
        assert space.decode(text) == arch and str(space.decode(text)) == text
        stages = text.split("|")
        assert [len(s.split("-")) for s in stages] == [4, 4, 4, 4, 4, 1]
        assert space.from_dict(space.to_dict(arch)) == arch
    arch = space.decode(all_ops(space, "MBConv_6_3"))
    assert space.choice_names(arch) == ["MBConv_6_3"] * 21


def test_bad_strings_name_the_problem() -> None:
    space = MobileNetSpace()
    good = all_ops(space, "MBConv_3_5")
    with pytest.raises(ArchFormatError, match=r"\[4, 4, 4, 4, 4, 1\]"):
        space.decode(good.replace("|", "-", 1))
    with pytest.raises(ArchFormatError, match="MBConv_9_9"):
        space.decode(good.replace("MBConv_3_5", "MBConv_9_9", 1))
    # Identity on a stage's first layer is not a choice there
    with pytest.raises(ArchFormatError, match=r"Identity.*stage0_layer0"):
        space.decode(good.replace("MBConv_3_5", "Identity", 1))
    space.decode(good.replace("-MBConv_3_5", "-Identity", 1))  # on a later layer it is


@pytest.mark.parametrize(("variant", "n_ops"), [("small", 10), ("large", 20)])
def test_identity_only_where_shapes_match(variant: str, n_ops: int) -> None:
    space = MobileNetSpace(variant)
    assert space.num_decisions == 21
    first = {0, 4, 8, 12, 16, 20}  # the first layer of each stage, depths 4, 4, 4, 4, 4, 1
    assert [len(d.choices) for d in space.decisions] == [n_ops - 1 if i in first else n_ops for i in range(21)]
    for decision, layer in zip(space.decisions, space.layers):
        same_shape = layer.stride == 1 and layer.c_in == layer.c_out
        assert ("Identity" in decision.choices) == same_shape, (decision.name, layer)
    assert space.num_archs == 9**6 * 10**15 if variant == "small" else 19**6 * 20**15
    # widths that round to the same value at a small multiplier leave the decisions unchanged
    narrow = MobileNetSpace(variant, width_mult=0.25)
    assert narrow.layers[12].c_in == narrow.layers[12].c_out  # 80 and 96 both round to 24
    assert narrow.decisions == space.decisions
    # and the Identity builder refuses a shape-changing layer
    with pytest.raises(ValueError, match="Identity needs equal shapes"):
        space.build_layer_op(0, "Identity")


def test_widths_strides_and_resolutions() -> None:
    space = MobileNetSpace()
    assert (space.stem_channels, space.first_channels, space.head_channels) == (32, 16, 1280)
    firsts = [layer for layer in space.layers if layer.index == 0]
    assert [(la.c_in, la.c_out, la.stride, la.input_size) for la in firsts] == [
        (16, 24, 2, 112), (24, 40, 2, 56), (40, 80, 2, 28), (80, 96, 1, 14), (96, 192, 2, 14), (192, 320, 1, 7)]
    half = MobileNetSpace(width_mult=0.5)  # make_divisible(8): 12 -> 16, 20 -> 24, 48 ...
    assert [la.c_out for la in half.layers if la.index == 0] == [16, 24, 40, 48, 96, 160]
    assert half.head_channels == 640


# --- counts by hand ----------------------------------------------------------------------------------
def _op_params(op: str, c: int, c_out: int) -> int:
    """Parameters of one op, written out from its definition (conv weights + 2 per BN channel)."""
    if op == "Identity":
        return 0
    kind, e, k = op.split("_")
    e, k, m = int(e), int(k), int(e) * c
    if kind == "MBConv":
        expand = 0 if e == 1 else c * m + 2 * m
        return expand + k * k * m + 2 * m + m * c_out + 2 * c_out
    spatial = {"NConv": [k * k], "DConv": [k * k, k * k], "RConv": [k, k]}[kind]  # dense middle convs
    return c * m + 2 * m + sum(s * m * m + 2 * m for s in spatial) + m * c_out + 2 * c_out


def _op_flops(op: str, c: int, c_out: int, size: int, stride: int) -> int:
    """FLOPs (2 per multiply-add) of one op's convs on one image of side ``size``."""
    if op == "Identity":
        return 0
    kind, e, k = op.split("_")
    e, k, m = int(e), int(k), int(e) * c
    out = -(-size // stride)
    if kind == "MBConv":
        expand = 0 if e == 1 else size * size * c * m
        return 2 * (expand + out * out * m * k * k + out * out * m * c_out)
    first, rest = {"NConv": (k * k, []), "DConv": (k * k, [k * k]), "RConv": (k, [k])}[kind]
    return 2 * (size * size * c * m + out * out * m * m * (first + sum(rest)) + out * out * m * c_out)


def hand_count(ops: list[str], num_classes: int = 1000) -> tuple[int, int]:
    """(params, FLOPs) of the full-size network at width 1.0 and 224 input, from the macro structure in
    docs/design_choices.md, "Search spaces"."""
    params = 3 * 32 * 9 + 2 * 32 + 9 * 32 + 2 * 32 + 32 * 16 + 2 * 16  # stem conv + BN, MBConv1 3x3 to 16
    flops = 2 * (112 * 112 * 32 * 3 * 9 + 112 * 112 * 32 * 9 + 112 * 112 * 32 * 16)
    c, size, i = 16, 112, 0
    for width, depth, stride in zip((24, 40, 80, 96, 192, 320), (4, 4, 4, 4, 4, 1), (2, 2, 2, 1, 2, 1)):
        for j in range(depth):
            s = stride if j == 0 else 1
            params += _op_params(ops[i], c, width)
            flops += _op_flops(ops[i], c, width, size, s)
            c, size, i = width, -(-size // s), i + 1
    params += c * 1280 + 2 * 1280 + 1280 * num_classes + num_classes
    flops += 2 * (size * size * c * 1280 + 1280 * num_classes)
    return params, flops


def test_params_and_flops_of_all_mbconv_6_3_match_a_hand_count_and_timm() -> None:
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    space = MobileNetSpace()
    arch = space.decode(all_ops(space, "MBConv_6_3"))
    params, flops = space.cost(arch)
    assert (params, flops) == hand_count(["MBConv_6_3"] * 21) == (4_684_776, 945_241_600)
    # timm's own EfficientNet builder, given the same block strings, counts the same weights
    defs = [["ds_r1_k3_s1_c16"], ["ir_r4_k3_s2_e6_c24"], ["ir_r4_k3_s2_e6_c40"], ["ir_r4_k3_s2_e6_c80"],
            ["ir_r4_k3_s1_e6_c96"], ["ir_r4_k3_s2_e6_c192"], ["ir_r1_k3_s1_e6_c320"]]
    timm_net = EfficientNet(decode_arch_def(defs), num_features=1280, stem_size=32, fix_stem=True,
                            act_layer=nn.ReLU6, round_chs_fn=lambda c: c)
    assert sum(p.numel() for p in timm_net.parameters()) == params


@pytest.mark.parametrize("seed", [0, 1])
def test_params_and_flops_of_random_large_archs_match_a_hand_count(seed: int) -> None:
    space = MobileNetSpace("large")
    arch = space.sample(torch.Generator().manual_seed(seed))
    assert space.cost(arch) == hand_count(space.choice_names(arch))


# --- supernet contract -------------------------------------------------------------------------------
# (supernet == exported network, for both variants and affine or not: tests/test_space_contract.py)
def test_only_the_selected_ops_get_gradients() -> None:
    space = tiny("large")
    supernet = space.build_supernet()
    arch = space.sample(torch.Generator().manual_seed(2))
    loss = supernet(torch.randn(2, 3, 32, 32), arch).logsumexp(1).sum()
    loss.backward()
    for block, choice in zip(supernet.body, space.choice_names(arch)):
        for name, op in block.candidates.items():
            grads = [p.grad for p in op.parameters()]
            if name == choice:
                assert all(g is not None and torch.isfinite(g).all() for g in grads), name
            else:
                assert all(g is None for g in grads), name


@pytest.mark.parametrize("op", LARGE_ONLY)
def test_large_ops_shapes_structure_and_residual(op: str) -> None:
    kind, e, k = op.split("_")
    for c_in, c_out, stride, residual in ((16, 16, 1, True), (16, 24, 2, False)):
        block = OPS.get(op)(c_in, c_out, stride, True).eval()
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        assert all(m.groups == 1 for m in convs)
        middle = [tuple(m.kernel_size) for m in convs[1:-1]]
        assert middle == {"NConv": [(int(k),) * 2], "DConv": [(int(k),) * 2] * 2,
                          "RConv": [(1, int(k)), (int(k), 1)]}[kind]
        assert convs[0].out_channels == int(e) * c_in
        x = torch.randn(2, c_in, 9, 9)
        assert block(x).shape == (2, c_out, 5 if stride == 2 else 9, 5 if stride == 2 else 9)
        # with the last conv zeroed the block computes 0 (+ x where it has the residual connection)
        nn.init.zeros_(convs[-1].weight)
        torch.testing.assert_close(block(x), x if residual else torch.zeros(2, c_out, 5, 5))
