"""The ENAS-style controller: seeded batched sampling, exact log-probabilities over an enumerated
space, REINFORCE against hand computations and a toy reward, and a sampler that checkpoints it all."""

from __future__ import annotations

import math

import pytest
import torch

from nas_lightning.samplers import UniformSampler
from nas_lightning.samplers.controller import ControllerSampler, LSTMController, reinforce_step
from nas_lightning.spaces import ChainSpace, DartsSpace, NB201Space
from nas_lightning.utils.distributed import step_generator

OPS3 = ("nor_conv_1x1", "nor_conv_3x3", "skip_connect")


@pytest.fixture(autouse=True)
def one_thread():
    """The controller's ops are tiny: extra intra-op threads only spin, and on a loaded machine
    they make each step ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_space(num_layers: int = 2) -> ChainSpace:
    return ChainSpace(num_layers=num_layers, ops=OPS3, C=4, num_classes=3, in_channels=1, input_size=8)


def skewed_controller(space, seed: int = 0) -> LSTMController:
    """A controller far from uniform, so that the checks below see a real distribution."""
    c = LSTMController(space, hidden_size=16, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for head in c.heads:
            head.weight.normal_(0, 1.0, generator=g)
            head.bias.normal_(0, 1.5, generator=g)
    return c


def test_sampling_is_seeded_and_batched() -> None:
    space = NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)  # 6 decisions of 5 choices
    c = skewed_controller(space)
    a1, lp1, h1 = c.sample(64, torch.Generator().manual_seed(3))
    a2, lp2, h2 = c.sample(64, torch.Generator().manual_seed(3))
    a3, _, _ = c.sample(64, torch.Generator().manual_seed(4))
    assert a1 == a2 and torch.equal(lp1, lp2) and torch.equal(h1, h2)
    assert a1 != a3 and len(set(a1)) > 10
    assert lp1.shape == (64,) and h1.shape == (64,) and lp1.requires_grad
    # Each row of the batch is scored as if it were alone.
    alone = torch.cat([c.log_prob([a]) for a in a1[:5]])
    torch.testing.assert_close(alone, lp1[:5])
    torch.testing.assert_close(c.log_prob(a1), lp1)


def test_probabilities_over_an_enumerated_space_sum_to_one() -> None:
    space = tiny_space()
    c = skewed_controller(space)
    archs = list(space.enumerate())
    assert len(archs) == 9
    with torch.no_grad():
        lp, ent = c.log_prob_and_entropy(archs)
    p = lp.double().exp()
    assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-6)
    assert float(p.max()) > 0.3  # skewed: not the uniform 1/9
    # The per-path entropy is H(d0) + H(d1 | a0), so its mean under p is the joint entropy.
    torch.testing.assert_close((p * ent.double()).sum(), -(p * lp.double()).sum(), rtol=1e-5, atol=1e-6)
    # The greedy arch: argmax of the first marginal, then of the conditional given it.
    joint = p.view(3, 3)
    first = int(joint.sum(1).argmax())
    assert c.argmax_arch().indices == (first, int(joint[first].argmax()))


def test_sample_frequencies_match_the_log_probs() -> None:
    space = tiny_space()
    c = skewed_controller(space, seed=5)
    with torch.no_grad():
        archs, _, _ = c.sample(20000, torch.Generator().manual_seed(0))
        p = c.log_prob(list(space.enumerate())).double().exp()
    counts = torch.bincount(torch.tensor([a.indices[0] * 3 + a.indices[1] for a in archs]), minlength=9)
    freq = counts.double() / len(archs)
    # Binomial standard error is at most 0.0036 at n = 20000; 0.015 is about four of them.
    assert float((freq - p).abs().max()) < 0.015


def test_baseline_and_step_match_a_hand_computation() -> None:
    space = tiny_space()
    c = skewed_controller(space)
    archs = [space.arch((0, 1)), space.arch((2, 2)), space.arch((1, 0))]
    rewards = torch.tensor([1.0, 0.0, 0.0])
    # First update: the baseline starts at the mean reward.
    b, stats = reinforce_step(c, torch.optim.SGD(c.parameters(), lr=0.0), archs, rewards, None, 0.0, 0.95)
    assert b == pytest.approx(1 / 3) and stats["baseline"] == pytest.approx(1 / 3)

    # Then b <- 0.9 * 0.6 + 0.1 * (1/3) = 0.573333..., and the step descends
    # -mean((r - b) * log p) - 0.01 * mean(H): compare with SGD(lr=1) on that loss written out here.
    ref = skewed_controller(space)
    lp, ent = ref.log_prob_and_entropy(archs)
    loss = -((rewards - 0.9 * 0.6 - 0.1 / 3) * lp).mean() - 0.01 * ent.mean()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    b, stats = reinforce_step(c, torch.optim.SGD(c.parameters(), lr=1.0), archs, rewards, 0.6, 0.01, 0.9)
    assert b == pytest.approx(0.54 + 0.1 / 3)
    assert stats["advantage"] == pytest.approx(1 / 3 - b, abs=1e-6)
    assert stats["loss"] == pytest.approx(loss.item(), abs=1e-6)
    for p_new, p_old, g in zip(c.parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p_new, p_old - g, rtol=1e-5, atol=1e-6)

    # A small step raises log p of the arch whose reward beat the baseline and lowers the others.
    before = c.log_prob(archs).detach()
    reinforce_step(c, torch.optim.SGD(c.parameters(), lr=0.01), archs, rewards, 0.5, 0.0, 0.9)
    change = c.log_prob(archs).detach() - before
    assert change[0] > 0 and change[1] < 0 and change[2] < 0


def test_reinforce_finds_the_rewarded_arch() -> None:
    space = tiny_space(num_layers=4)  # 81 archs; reward 1 for one of them, 0 for the rest
    target = space.arch((2, 0, 1, 1))
    c = LSTMController(space, hidden_size=16, seed=0)
    opt = torch.optim.Adam(c.parameters(), lr=0.02)
    assert c.argmax_arch() != target and c.log_prob([target]).exp().item() < 0.05
    baseline = None
    for step in range(150):
        with torch.no_grad():
            archs, _, _ = c.sample(4, step_generator(0, "toy", step))
        rewards = torch.tensor([float(a == target) for a in archs])
        baseline, _ = reinforce_step(c, opt, archs, rewards, baseline, 1e-4, 0.95)
    assert c.argmax_arch() == target
    assert c.log_prob([target]).exp().item() > 0.8


def test_sampler_is_uniform_in_warm_up_then_follows_the_controller() -> None:
    space = tiny_space(num_layers=3)
    sampler = ControllerSampler(space, seed=4, hidden_size=16)
    uniform = UniformSampler(space, seed=4)
    assert [sampler.sample(s) for s in range(20)] == [uniform.sample(s) for s in range(20)]
    sampler.start(10)
    assert [sampler.sample(s) for s in range(10)] == [uniform.sample(s) for s in range(10)]
    with torch.no_grad():
        expected = [sampler.controller.sample(1, step_generator(4, "controller", s))[0][0] for s in range(10, 30)]
    assert [sampler.sample(s) for s in range(10, 30)] == expected


def test_sampler_state_round_trip_includes_weights_optimizer_and_baseline() -> None:
    space = tiny_space(num_layers=3)
    a = ControllerSampler(space, seed=1, hidden_size=16, lr=0.05)
    a.start(3)
    for _ in range(3):
        archs = a.draw_update_archs(4)
        a.update(archs, torch.tensor([float(x.indices[0] == 1) for x in archs]))
    b = ControllerSampler(space, seed=9, hidden_size=16, lr=0.05)
    b.load_state_dict(a.state_dict())
    assert (b.seed, b.start_step, b.baseline, b.num_updates, b.history) == (1, 3, a.baseline, 3, a.history)
    assert [b.sample(s) for s in range(20)] == [a.sample(s) for s in range(20)]
    # Adam's moments came along: the next identical update lands on identical weights.
    archs = a.draw_update_archs(4)
    assert b.draw_update_archs(4) == archs
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0])
    a.update(archs, rewards)
    b.update(archs, rewards)
    for (name, p), q in zip(a.controller.named_parameters(), b.controller.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
    fresh = ControllerSampler(space, seed=1, hidden_size=16, lr=0.05)
    blank_adam = ControllerSampler(space, hidden_size=16).optimizer.state_dict()
    fresh.load_state_dict({**a.state_dict(), "optimizer": blank_adam})
    fresh.update(archs, rewards)
    a.update(archs, rewards)
    assert any(not torch.equal(p, q) for p, q in zip(a.controller.parameters(), fresh.controller.parameters()))


def test_sampler_rejects_foreign_state() -> None:
    sampler = ControllerSampler(tiny_space(), hidden_size=16)
    with pytest.raises(ValueError, match="ControllerSampler"):
        sampler.load_state_dict({"seed": 0})
    with pytest.raises(ValueError, match="hidden_size=16"):
        sampler.load_state_dict(ControllerSampler(tiny_space(), hidden_size=8).state_dict())


def test_controller_on_the_darts_space_with_unequal_decision_sizes() -> None:
    """DARTS decisions have 8 ops or C(k, 2) parent pairs: every sampled arch is valid, and the
    controller's log-probs of its own samples agree with ``log_prob``."""
    space = DartsSpace(C=4, layers=3, num_classes=5, in_channels=1, input_size=8)
    assert len({len(d.choices) for d in space.decisions}) > 1
    controller = LSTMController(space, seed=0)
    archs, log_probs, entropies = controller.sample(16, torch.Generator().manual_seed(0))
    assert all(space.decode(str(a)) == a for a in archs)
    torch.testing.assert_close(controller.log_prob(archs), log_probs)
    # With untrained (near-uniform) weights the log-prob is close to that of uniform sampling.
    uniform = -sum(math.log(len(d.choices)) for d in space.decisions)
    assert torch.allclose(log_probs, torch.full_like(log_probs, uniform), atol=1.0)
    assert torch.all(entropies > 0)
