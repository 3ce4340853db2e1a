"""Performance-disturbance metrics (DI-NAS section 5.3): the pure functions against hand-worked numbers
and scipy, the disturbance matrix's semantics, the DisturbanceTracker without a Trainer, and the
DisturbanceMetrics callback during SPOS fit."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scipy import stats

from callbacks.disturbance_metrics import DisturbanceMetrics
from callbacks.projection_matrix_update import (
    ProjectedSteps,
    fold_features,
    mean_inputs,
    select_layers,
)
from nas_lightning.data import SyntheticDataModule
from nas_lightning.evaluation import evaluate_archs
from nas_lightning.methods import SPOS
from nas_lightning.metrics.disturbance import (
    DisturbanceMatrix,
    disturbance_matrix,
    draw_archs,
    epoch_ktau,
    epoch_metrics,
    gt_tau,
    lr_of,
    optimizer_at_lr,
    performance_change,
    save_disturbance_matrix,
)
from nas_lightning.metrics.disturbance_tracker import LOGGED, DisturbanceTracker
from nas_lightning.metrics.ground_truth import load_ground_truth
from nas_lightning.projection.layer_inputs import LayerInputRecorder
from nas_lightning.projection.owm import LayerLayout, gradient_matrix, weight_matrix
from nas_lightning.spaces import ChainSpace
from nas_lightning.utils import step_generator


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors gain nothing from threads, and on a small shared machine they oversubscribe it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def space() -> ChainSpace:
    return ChainSpace(num_layers=2, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect"), C=6, num_classes=4,
                      in_channels=1, input_size=8)


def data() -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=128, num_test=32,
                               batch_size=32, val_fraction=0.25, noise=0.8, seed=0)


def model() -> SPOS:
    return SPOS(space(), seed=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), num_eval_archs=0)


def batches(n: int, seed: int, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


# --- pure functions ------------------------------------------------------------------------------------


def test_performance_change_is_the_mean_absolute_change() -> None:
    # |50-55| + |60-60| + |70-65| + |40-48| = 18 over 4 archs.
    assert performance_change([50.0, 60.0, 70.0, 40.0], [55.0, 60.0, 65.0, 48.0]) == pytest.approx(4.5)
    assert performance_change(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0
    with pytest.raises(ValueError, match="same archs"):
        performance_change([1.0, 2.0], [1.0])


def test_epoch_ktau_and_gt_tau_are_kendall_tau_b() -> None:
    # One swapped pair out of 6: (5 concordant - 1 discordant) / 6.
    assert epoch_ktau([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(2 / 3)
    g = torch.Generator().manual_seed(0)
    now = torch.randint(0, 6, (40,), generator=g).double()  # ties, as accuracies on a small val set have
    before = now + torch.randint(-2, 3, (40,), generator=g).double()
    assert epoch_ktau(now, before) == pytest.approx(stats.kendalltau(now, before).statistic, abs=1e-6)
    assert gt_tau(now, before) == pytest.approx(stats.kendalltau(now, before).statistic, abs=1e-6)
    assert math.isnan(epoch_ktau([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]))


def test_epoch_metrics_compare_with_epoch_t_minus_d() -> None:
    history = {0: [10.0, 20.0, 30.0], 1: [12.0, 18.0, 30.0], 2: [30.0, 20.0, 10.0]}
    first = epoch_metrics(history, 0, interval=1)
    assert math.isnan(first["performance_change"]) and math.isnan(first["ktau"])
    assert epoch_metrics(history, 2, interval=2)["performance_change"] == pytest.approx(40 / 3)
    assert epoch_metrics(history, 2, interval=2)["ktau"] == pytest.approx(-1.0)
    # Against GT (3, 1, 2): pairs (0,1) and (0,2) discordant, (1,2) concordant.
    assert epoch_metrics(history, 1, interval=1, gt_acc=[3.0, 1.0, 2.0])["gt_tau"] == pytest.approx(-1 / 3)


# --- the disturbance matrix ----------------------------------------------------------------------------


def test_matrix_with_lr_zero_repeats_the_initial_accuracies_and_leaves_the_supernet_alone() -> None:
    torch.manual_seed(0)
    sp = space()
    net = sp.build_supernet()
    archs = draw_archs(sp, 4, step_generator(0, "m", 0))
    val = batches(2, seed=1)
    result = disturbance_matrix(net, archs, batches(3, seed=2), val, lambda p: torch.optim.SGD(p, lr=0.0))
    assert result.before.shape == (4,) and result.after.shape == (4, 4) and result.table().shape == (4, 5)
    assert torch.equal(result.after, result.before[:, None].expand(4, 4))
    torch.testing.assert_close(result.before, evaluate_archs(net, archs, val).accuracy.double(), rtol=0, atol=1e-12)


def test_matrix_entry_i_j_is_arch_i_right_after_arch_j_was_trained() -> None:
    torch.manual_seed(0)
    sp = space()
    net = sp.build_supernet()
    original = copy.deepcopy(net.state_dict())
    archs = draw_archs(sp, 3, step_generator(0, "m", 0))
    train, val = batches(4, seed=2), batches(2, seed=1)

    def sgd(p):
        return torch.optim.SGD(p, lr=0.5, momentum=0.9)

    result = disturbance_matrix(net, archs, train, val, sgd, steps_per_arch=2)
    # The real supernet's weights and BN buffers are untouched, and it got no gradients.
    for k, v in net.state_dict().items():
        assert torch.equal(v, original[k]), k
    assert all(p.grad is None for p in net.parameters())

    # The same experiment by hand: a_j trains on batches 2j, 2j+1 (cycling), then every arch is evaluated.
    ref, opt, step = copy.deepcopy(net), None, 0
    opt = sgd(ref.parameters())
    for j, arch in enumerate(archs):
        ref.train()
        for _ in range(2):
            x, y = train[step % len(train)]
            step += 1
            opt.zero_grad()
            F.cross_entropy(ref(x, arch), y).backward()
            opt.step()
        torch.testing.assert_close(result.after[:, j], evaluate_archs(ref, archs, val).accuracy.double())
    assert not torch.equal(result.after[:, -1], result.before), "training moved nothing: the check proves nothing"

    # The DDP path (gradients averaged, totals summed) with two identical "ranks" gives the same matrix.
    doubled = disturbance_matrix(net, archs, train, val, sgd, steps_per_arch=2, reduce_sum=lambda t: 2 * t,
                                 world_size=2)
    torch.testing.assert_close(doubled.table(), result.table())


class RecordingRule:
    """A StepRule that logs its calls and what the gradients were at each."""

    def __init__(self, net) -> None:
        self.net, self.calls = net, []

    def _grads(self) -> bool:
        return any(p.grad is not None for p in self.net.parameters())

    def begin_step(self) -> None:
        self.calls.append(("begin", self._grads()))

    def before_optimizer_step(self) -> None:
        self.calls.append(("before", self._grads()))

    def end_step(self) -> None:
        self.calls.append(("end", self._grads()))

    def close(self) -> None:
        self.calls.append(("close", None))


def test_matrix_runs_the_step_rule_on_its_copy_around_every_step() -> None:
    torch.manual_seed(0)
    sp = space()
    net = sp.build_supernet()
    archs = draw_archs(sp, 3, step_generator(0, "m", 0))
    rules: list[RecordingRule] = []

    def factory(copy_net):
        rules.append(RecordingRule(copy_net))
        return rules[-1]

    disturbance_matrix(net, archs, batches(2, seed=2), batches(1, seed=1), lambda p: torch.optim.SGD(p, lr=0.1),
                       steps_per_arch=2, step_rule=factory)
    (rule,) = rules
    assert rule.net is not net  # the copy, never the run's supernet
    # Six steps: no gradient when a step begins, gradients before the optimiser steps; then close.
    assert rule.calls == [("begin", False), ("before", True), ("end", True)] * 6 + [("close", None)]


def test_projected_steps_project_with_a_copy_of_P_and_fold_each_steps_inputs() -> None:
    """DI-NAS's rule on a copy: the update the optimiser applies (SGD with momentum and weight decay) becomes
    its projection dW @ P (eq. 6) with the run's P, the step's mean input is folded into the rule's own P
    afterwards (eq. 8), and the run's P is untouched."""
    torch.manual_seed(0)
    sp = space()
    net = sp.build_supernet()
    arch = sp.decode("|nor_conv_3x3|nor_conv_1x1|")
    x, y = batches(1, seed=3)[0]
    layers = select_layers(net, "all")
    layouts = {n: LayerLayout.of(m) for n, m in layers.items()}
    run_P: dict[str, torch.Tensor] = {}
    # The run has already folded another batch's inputs (through its own recorder) into its P.
    recorder = LayerInputRecorder(layers)
    recorder.active = True
    F.cross_entropy(net(batches(1, seed=4)[0][0], arch), y).backward()
    recorder.remove()
    fold_features(layers, layouts, run_P, mean_inputs(recorder.pop(), None), 0.5, 4, torch.Generator().manual_seed(0))
    net.zero_grad(set_to_none=True)
    snapshot = {n: p.clone() for n, p in run_P.items()}

    rule = ProjectedSteps(net, run_P, alpha=0.5, layers="all", max_patches=4, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    start = copy.deepcopy(net.state_dict())  # the weights the step's inputs were computed with
    rule.begin_step()
    F.cross_entropy(net(x, arch), y).backward()
    raw = {n: None if (g := gradient_matrix(m, layouts[n])) is None else g.clone() for n, m in layers.items()}
    before = {n: weight_matrix(m, layouts[n]).clone() for n, m in layers.items()}
    rule.before_optimizer_step()
    opt.step()
    # The optimiser's own update, before the rule replaces it with its projection.
    stepped = {n: weight_matrix(m, layouts[n]).clone() for n, m in layers.items()}
    with torch.no_grad():
        net(x, arch)  # an evaluation pass between steps is not a feature
    rule.end_step()
    rule.close()
    for name, module in layers.items():
        applied = weight_matrix(module, layouts[name]) - before[name]
        if raw[name] is None:
            assert module.weight.grad is None and torch.equal(applied, torch.zeros_like(applied))
            continue
        update = stepped[name] - before[name]
        want = update @ run_P[name] if name in run_P else update
        torch.testing.assert_close(applied, want)
        assert name not in run_P or not torch.allclose(applied, update)

    expected = {n: p.clone() for n, p in run_P.items()}
    net.load_state_dict(start)
    layer_means = {}
    for name, module in layers.items():
        if raw[name] is not None:
            inputs = []
            handle = module.register_forward_pre_hook(lambda m, a, inputs=inputs: inputs.append(a[0].detach()))
            net(x, arch)
            handle.remove()
            layer_means[name] = inputs[0].float().mean(0)
    fold_features(layers, layouts, expected, layer_means, 0.5, 4, step_generator(0, "owm-patches-copy", 0))
    assert set(rule.P) == set(expected)
    for name in expected:
        torch.testing.assert_close(rule.P[name], expected[name])
    for name, P in run_P.items():
        assert torch.equal(P, snapshot[name]), name
    assert any(not torch.equal(rule.P[n], snapshot[n]) for n in snapshot)


def test_matrix_summaries_by_hand() -> None:
    # Three archs; training arch 0 moves arch 1 by -2 and arch 2 by +1 and itself by +4, and so on.
    m = DisturbanceMatrix(archs=[], before=torch.tensor([50.0, 60.0, 70.0]),
                          after=torch.tensor([[54.0, 53.0, 53.0], [58.0, 58.0, 61.0], [71.0, 71.0, 75.0]]))
    torch.testing.assert_close(m.step_changes(), torch.tensor([[4.0, -1.0, 0.0], [-2.0, 0.0, 3.0], [1.0, 0.0, 4.0]]))
    assert m.disturbance() == pytest.approx((2 + 1 + 1 + 0 + 0 + 3) / 6)
    assert m.own_change() == pytest.approx((4 + 0 + 4) / 3)


def test_matrix_files_are_a_csv_and_a_png(tmp_path: Path) -> None:
    sp = space()
    archs = draw_archs(sp, 3, step_generator(0, "m", 0))
    result = disturbance_matrix(sp.build_supernet(), archs, batches(1, 2), batches(1, 1),
                                lambda p: torch.optim.SGD(p, lr=0.1))
    csv_path, png_path = save_disturbance_matrix(result, tmp_path / "out" / "matrix")
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["arch", "before", "after_0", "after_1", "after_2"]
    assert [r[0] for r in rows[1:]] == [str(a) for a in archs]
    assert torch.tensor([[float(v) for v in r[1:]] for r in rows[1:]], dtype=torch.float64).equal(result.table())
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 1000
    assert sorted(p.name for p in png_path.parent.iterdir()) == ["matrix.csv", "matrix.png"]  # no temp files left


# --- the tracker, without a Trainer ---------------------------------------------------------------------


def test_draw_archs_gives_distinct_archs_from_the_space_or_a_pool() -> None:
    sp = space()
    drawn = draw_archs(sp, 5, step_generator(0, "d", 0))
    assert len(set(drawn)) == 5 and drawn == draw_archs(sp, 5, step_generator(0, "d", 0))
    assert sorted(draw_archs(sp, 50, step_generator(0, "d", 0))) == sorted(sp.enumerate()), "capped at the space"
    pool = list(sp.enumerate())[::-1]
    picked = draw_archs(sp, 4, step_generator(1, "d", 0), pool)
    assert len(set(picked)) == 4 and picked == [a for a in pool if a in picked], "a pool keeps its order"


def test_tracker_metrics_match_scipy_and_its_state_round_trips(tmp_path: Path) -> None:
    sp = space()
    archs = list(sp.enumerate())
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({str(a): [40.0 + (5 * i) % 9, 41.0 + (2 * i) % 9] for i, a in enumerate(archs)}))
    tracker = DisturbanceTracker(num_archs=5, interval=2, ground_truth=str(gt_path), seed=3)
    chosen = tracker.choose_archs(sp)
    assert chosen == draw_archs(sp, 5, step_generator(3, "disturbance", 0), load_ground_truth(gt_path, sp).archs)
    gt = tracker.gt_acc
    assert gt == [load_ground_truth(gt_path, sp).accuracy[a] for a in chosen]

    g = torch.Generator().manual_seed(0)
    acc = {e: (40.0 + 2.5 * torch.randint(0, 10, (5,), generator=g).double()).tolist() for e in range(4)}
    logged = {e: tracker.record(e, 10 * (e + 1), acc[e]) for e in range(4)}
    assert "disturbance/gt_tau" in logged[0] and set(logged[0]) <= {"disturbance/gt_tau",
                                                                     "disturbance/gt_tau_equal_cost"}, "no epoch t-2"
    m = tracker.last_metrics  # epoch 3 against epoch 1
    assert m["performance_change"] == pytest.approx(sum(abs(a - b) for a, b in zip(acc[3], acc[1])) / 5)
    assert m["ktau"] == pytest.approx(stats.kendalltau(acc[3], acc[1]).statistic, abs=1e-6)
    assert m["gt_tau"] == pytest.approx(stats.kendalltau(acc[3], gt).statistic, abs=1e-6)
    assert logged[3] == {f"disturbance/{k}": v for k, v in m.items() if k in LOGGED and not math.isnan(v)}
    assert {"disturbance/performance_change", "disturbance/ktau", "disturbance/gt_tau"} <= set(logged[3])
    rows = tracker.metrics_rows()
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and [r["global_step"] for r in rows] == [10, 20, 30, 40]
    assert math.isnan(rows[1]["ktau"]) and rows[2]["ktau"] == pytest.approx(
        stats.kendalltau(acc[2], acc[0]).statistic, abs=1e-6)
    assert rows[0]["flops_tau"] == pytest.approx(stats.kendalltau([sp.flops(a) for a in chosen], gt).statistic,
                                                 abs=1e-6)
    with pytest.raises(ValueError, match="one accuracy per arch"):
        tracker.record(4, 50, acc[0][:-1])

    # The state goes through a checkpoint (here JSON, which turns the epoch keys into strings) and back.
    state = json.loads(json.dumps(tracker.state_dict()))
    assert state["archs"] == [str(a) for a in chosen]
    restored = DisturbanceTracker(num_archs=5, interval=2, ground_truth=str(gt_path), seed=3)
    restored.load_state_dict(state)
    restored.choose_archs(sp)
    assert restored.history == tracker.history and restored.global_steps == tracker.global_steps
    tracker.write_history(tmp_path / "a")
    restored.write_history(tmp_path / "b")
    for name in ("disturbance_metrics.csv", "disturbance_history.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    history = read(tmp_path / "a" / "disturbance_history.csv")
    assert list(history[0]) == ["arch", "gt_accuracy", "epoch_0", "epoch_1", "epoch_2", "epoch_3"]
    assert [float(r["epoch_3"]) for r in history] == acc[3]

    other = DisturbanceTracker(num_archs=5, interval=2, ground_truth=str(gt_path), seed=4)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="another arch set"):
        other.choose_archs(sp)


def test_tracker_matrix_trains_on_the_latest_batches_at_the_given_lr() -> None:
    torch.manual_seed(0)
    sp = space()
    net = sp.build_supernet()
    tracker = DisturbanceTracker(num_archs=3, matrix_archs=2, matrix_steps=2, seed=0)
    tracker.choose_archs(sp)
    assert tracker.matrix_arch_list == draw_archs(sp, 2, step_generator(0, "disturbance_matrix", 0))
    val = batches(1, seed=1)
    assert not tracker.matrix_ready(val)
    seen = batches(6, seed=2)
    for batch in seen:
        tracker.observe_train_batch(batch)
    assert tracker.matrix_ready(val) and not tracker.matrix_ready([])
    # A 0.3 lr from a factory built at 0.01: what ``matrix_lr`` or the run's current rate does.
    factory = optimizer_at_lr(lambda p: torch.optim.SGD(p, lr=0.01), 0.3)
    result = tracker.compute_matrix(net, val, factory)
    want = disturbance_matrix(net, tracker.matrix_arch_list, seen[-4:], val, lambda p: torch.optim.SGD(p, lr=0.3),
                              steps_per_arch=2)
    assert tracker.last_matrix is result and torch.equal(result.table(), want.table())
    assert not torch.equal(result.after[:, -1], result.before)
    with pytest.raises(ValueError, match="matrix_archs=0"):
        DisturbanceTracker(num_archs=3).compute_matrix(net, val, factory)


def test_lr_of_finds_the_group_that_trains_the_supernet() -> None:
    net, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": other.parameters(), "lr": 0.5}, {"params": net.parameters(), "lr": 0.2}])
    assert lr_of([opt], net.parameters()) == 0.2
    assert lr_of([], net.parameters()) is None
    assert optimizer_at_lr(lambda p: torch.optim.SGD(p, lr=0.1), None)(net.parameters()).param_groups[0]["lr"] == 0.1


# --- the callback --------------------------------------------------------------------------------------


def fit(root: Path, callbacks: list[pl.Callback], epochs: int = 3, ckpt_path: str | None = None,
        seed: int = 0) -> tuple[SPOS, pl.Trainer]:
    pl.seed_everything(seed, verbose=False)
    m = model()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=root,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
                         callbacks=callbacks)
    trainer.fit(m, datamodule=data(), ckpt_path=ckpt_path)
    return m, trainer


def read(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_callback_logs_and_writes_the_section_5_3_metrics(tmp_path: Path) -> None:
    archs = list(space().enumerate())
    gt_path = tmp_path / "gt.json"
    # Two GT seeds that disagree on some archs, so the ceiling is a real number below 1.
    per_seed = {str(a): [50.0 + 3 * i, 50.0 + 3 * ((5 * i) % len(archs))] for i, a in enumerate(archs)}
    gt_path.write_text(json.dumps(per_seed))
    out = tmp_path / "dist"
    cb = DisturbanceMetrics(num_archs=6, ground_truth=str(gt_path), matrix_archs=3, matrix_at="every",
                            output_dir=str(out))
    m, trainer = fit(tmp_path, [cb])

    assert len(cb.archs) == 6 and len(set(cb.archs)) == 6 and set(cb.archs) <= set(archs)
    assert sorted(cb.history) == [0, 1, 2]
    history = read(out / "disturbance_history.csv")
    assert list(history[0]) == ["arch", "gt_accuracy", "epoch_0", "epoch_1", "epoch_2"]
    assert [r["arch"] for r in history] == [str(a) for a in cb.archs]
    acc = {e: [float(r[f"epoch_{e}"]) for r in history] for e in range(3)}
    gt = [float(r["gt_accuracy"]) for r in history]
    # The last epoch's numbers are the evaluator's on the validation data with the final weights.
    d = data()
    d.setup("fit")
    final = evaluate_archs(m.supernet, cb.archs, list(d.val_dataloader())).accuracy
    assert acc[2] == pytest.approx(final.tolist(), abs=1e-9)

    metrics = read(out / "disturbance_metrics.csv")
    assert [int(r["epoch"]) for r in metrics] == [0, 1, 2] and math.isnan(float(metrics[0]["performance_change"]))
    for e in (1, 2):
        change = sum(abs(a - b) for a, b in zip(acc[e], acc[e - 1])) / 6
        assert float(metrics[e]["performance_change"]) == pytest.approx(change, abs=1e-9)
        want_tau = stats.kendalltau(acc[e], acc[e - 1]).statistic
        if not math.isnan(want_tau):
            assert float(metrics[e]["ktau"]) == pytest.approx(want_tau, abs=1e-6)
    assert trainer.logged_metrics["disturbance/performance_change"].item() == pytest.approx(change, abs=1e-5)
    want_gt_tau = stats.kendalltau(acc[2], gt).statistic
    assert float(metrics[2]["gt_tau"]) == pytest.approx(want_gt_tau, abs=1e-6)
    # Beside GT-Tau: the ceiling and the cost proxies on the same six archs, and GT-Tau over equal-FLOPs pairs.
    sp = space()
    seeds = [per_seed[str(a)] for a in cb.archs]
    flops = [sp.flops(a) for a in cb.archs]
    row = metrics[2]
    assert float(row["gt_ceiling"]) == pytest.approx(stats.kendalltau(*zip(*seeds)).statistic, abs=1e-6)
    assert float(row["params_tau"]) == pytest.approx(
        stats.kendalltau([sp.params(a) for a in cb.archs], gt).statistic, abs=1e-6)
    assert float(row["flops_tau"]) == pytest.approx(stats.kendalltau(flops, gt).statistic, abs=1e-6)
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6) if flops[i] == flops[j]]
    assert pairs and all(acc[2][i] != acc[2][j] for i, j in pairs)  # no ties: (concordant - discordant) / pairs
    signs = [math.copysign(1, (acc[2][i] - acc[2][j]) * (gt[i] - gt[j])) for i, j in pairs]
    assert float(row["gt_tau_equal_cost"]) == pytest.approx(sum(signs) / len(signs), abs=1e-6)
    if not math.isnan(want_gt_tau):
        assert trainer.logged_metrics["disturbance/gt_tau"].item() == pytest.approx(want_gt_tau, abs=1e-5)

    for e in range(3):
        rows = list(csv.reader((out / f"disturbance_matrix_epoch{e}.csv").open()))
        assert len(rows) == 4 and all(len(r) == 5 for r in rows)
        assert (out / f"disturbance_matrix_epoch{e}.png").stat().st_size > 1000
    assert cb.last_matrix is not None and cb.last_matrix.after.shape == (3, 3)


def test_matrix_does_not_disturb_the_training_run(tmp_path: Path) -> None:
    plain, _ = fit(tmp_path / "plain", [], epochs=2)
    measured, _ = fit(tmp_path / "measured", [DisturbanceMetrics(num_archs=3, matrix_archs=3, matrix_at="every",
                                                                 output_dir=str(tmp_path / "d"))], epochs=2)
    assert (tmp_path / "d" / "disturbance_matrix_epoch1.csv").exists()
    for (name, p), q in zip(plain.supernet.state_dict().items(), measured.supernet.state_dict().values()):
        assert torch.equal(p, q), name


def test_matrix_lr_replaces_a_schedule_that_ended_at_zero(tmp_path: Path) -> None:
    def cosine_run(root: Path, **kw) -> DisturbanceMetrics:
        cb = DisturbanceMetrics(num_archs=3, matrix_archs=3, matrix_at="end", output_dir=str(root), **kw)
        m = SPOS(space(), seed=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), num_eval_archs=0,
                 lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2))
        pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, default_root_dir=root,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   enable_checkpointing=False, callbacks=[cb]).fit(m, datamodule=data())
        return cb

    with pytest.warns(UserWarning, match="learning rate is 0"):
        ended = cosine_run(tmp_path / "a")
    assert torch.equal(ended.last_matrix.after, ended.last_matrix.before[:, None].expand(3, 3))
    fixed = cosine_run(tmp_path / "b", matrix_lr=0.5)
    assert not torch.equal(fixed.last_matrix.after, fixed.last_matrix.before[:, None].expand(3, 3))


def test_resume_restores_the_history(tmp_path: Path) -> None:
    full = DisturbanceMetrics(num_archs=5, output_dir=str(tmp_path / "full"))
    fit(tmp_path / "full", [full])

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    fit(tmp_path / "a", [DisturbanceMetrics(num_archs=5, output_dir=str(tmp_path / "a")), ckpt], epochs=1)
    resumed = DisturbanceMetrics(num_archs=5, output_dir=str(tmp_path / "b"))
    fit(tmp_path / "b", [resumed], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), seed=123)

    assert sorted(resumed.history) == [0, 1, 2] and resumed.global_steps == full.global_steps
    for e in range(3):
        assert resumed.history[e] == pytest.approx(full.history[e], abs=1e-6)
    # The resumed run's CSV covers the epochs before the crash too, with the same numbers.
    got, want = (read(tmp_path / d / "disturbance_metrics.csv") for d in ("b", "full"))
    assert [list(r) for r in got] == [list(r) for r in want]
    for r, w in zip(got, want):
        assert [float(v) for v in r.values()] == pytest.approx([float(v) for v in w.values()], abs=1e-6, nan_ok=True)

    # A history over other archs (the space or the GT file changed under the same state key) is refused.
    other = DisturbanceMetrics(num_archs=5)
    other.archs = full.archs[::-1]
    with pytest.raises(ValueError, match="another arch set"):
        other.load_state_dict(full.state_dict())


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="num_archs"):
        DisturbanceMetrics(num_archs=1)
    with pytest.raises(ValueError, match="interval"):
        DisturbanceMetrics(interval=0)
    with pytest.raises(ValueError, match="matrix_at"):
        DisturbanceMetrics(matrix_at="sometimes")  # type: ignore[arg-type]


DDP_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import pytorch_lightning as pl
    import torch
    sys.path.insert(0, sys.argv[2])
    from test_disturbance import data, model
    from callbacks.disturbance_metrics import DisturbanceMetrics

    out = Path(sys.argv[1])
    pl.seed_everything(0, verbose=False)
    cb = DisturbanceMetrics(num_archs=4, matrix_archs=2, output_dir=str(out / "files"))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[cb])
    trainer.fit(model(), datamodule=data())
    torch.save({"history": cb.history, "matrix": cb.last_matrix.table()}, out / f"rank{trainer.global_rank}.pt")
""")


@pytest.mark.slow
def test_ddp_ranks_agree_on_history_and_matrix(tmp_path: Path) -> None:
    script = tmp_path / "ddp_disturbance.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert sorted(r0["history"]) == [0, 1] and r0["history"] == r1["history"]
    assert r0["matrix"].shape == (2, 3) and torch.equal(r0["matrix"], r1["matrix"])
    assert (tmp_path / "files" / "disturbance_matrix_end.png").exists()
