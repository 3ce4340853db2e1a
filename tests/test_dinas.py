"""DI-NAS: uniform warm-up then the controller's archs, rewards that are the inherited-weight accuracy
on one supernet-val batch, the controller's export, exact resume, and identical controllers on two
DDP ranks."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from callbacks.controller_step import ControllerStep
from callbacks.disturbance_metrics import DisturbanceMetrics
from callbacks.projection_matrix_update import ProjectionMatrixUpdate
from nas_lightning.data import SyntheticDataModule
from nas_lightning.data.batch_source import seeded_batches
from nas_lightning.evaluation import evaluate_archs
from nas_lightning.methods import SPOS
from nas_lightning.methods.dinas import DINAS
from nas_lightning.projection import ProjectedSteps
from nas_lightning.samplers import UniformSampler
from nas_lightning.samplers.controller import ControllerSampler, controller_updates
from nas_lightning.spaces import ChainSpace, DartsSpace
from nas_lightning.utils.distributed import step_generator

SEED, STEPS_PER_EPOCH, UPDATES, ARCHS = 3, 4, 3, 2
SCRIPT = Path(__file__).parent / "scripts" / "ddp_dinas.py"


def make_space() -> ChainSpace:
    return ChainSpace(num_layers=3, C=4, num_classes=4, in_channels=1, input_size=8)


def make_data() -> SyntheticDataModule:
    # 144 supernet-train images (4 steps of 32), 48 supernet-val (batches of 16).
    return SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=192, num_test=32, noise=0.5,
                               batch_size=32, eval_batch_size=16, val_fraction=0.25, seed=0)


def make_model(**kw: Any) -> DINAS:
    return DINAS(make_space(), partial(ControllerSampler, hidden_size=16, lr=0.05), seed=SEED, num_eval_archs=2,
                 optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), **kw)


def dinas_callbacks(projection: bool = True, **kw: Any) -> list[pl.Callback]:
    """DI-NAS's two callbacks, after any recording callback (so a recorder sees each epoch end first)."""
    step = ControllerStep(start_epoch=1, steps_per_epoch=UPDATES, archs_per_step=ARCHS)
    return [step, ProjectionMatrixUpdate(seed=SEED, **kw)] if projection else [step]


def fresh_sampler(state: dict[str, Any] | None = None) -> ControllerSampler:
    sampler = ControllerSampler(make_space(), seed=SEED, hidden_size=16, lr=0.05)
    if state is not None:
        sampler.load_state_dict(state)
    return sampler


class Record(pl.Callback):
    """Each step's arch, the sampler's state as each epoch's training starts, and the supernet and
    sampler just before each epoch's controller updates (this runs before the method's callbacks)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, str]] = []
        self.epoch_start: dict[int, dict[str, Any]] = {}
        self.before_updates: dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.epoch_start.setdefault(trainer.current_epoch, pl_module.sampler.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.global_step - 1, str(pl_module.current_arch)))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.before_updates[trainer.current_epoch] = (copy.deepcopy(pl_module.supernet.state_dict()),
                                                      pl_module.sampler.state_dict())


def trainer(root: Path, max_epochs: int, callbacks=(), dinas: bool = True, **kw: Any) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=root,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=list(callbacks) + (dinas_callbacks() if dinas else []), **kw)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only spin on a loaded CI machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DINAS, Record, pl.Trainer, Path]:
    """Three uninterrupted epochs: warm-up epoch 0, then two epochs on the controller's archs."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("full")
    pl.seed_everything(0)
    model, record = make_model(), Record()
    t = trainer(root, 3, [record], enable_checkpointing=False)
    t.fit(model, datamodule=make_data())
    return model, record, t, root


def test_warm_up_is_uniform_then_the_controller_samples(full_run) -> None:
    model, record, t, _ = full_run
    sampler = model.controller
    assert [s for s, _ in record.steps] == list(range(3 * STEPS_PER_EPOCH))
    assert (sampler.start_step, sampler.num_updates, sampler.last_update_epoch) == (STEPS_PER_EPOCH, 2 * UPDATES, 2)
    uniform = UniformSampler(make_space(), seed=SEED)
    assert [a for s, a in record.steps[:STEPS_PER_EPOCH]] == [str(uniform.sample(s)) for s in range(STEPS_PER_EPOCH)]
    # Epoch 1 trains the untrained controller's draws, epoch 2 those of the controller after epoch 1's updates.
    assert record.epoch_start[1]["num_updates"] == 0 and record.epoch_start[2]["num_updates"] == UPDATES
    for epoch in (1, 2):
        replay = fresh_sampler(record.epoch_start[epoch])
        steps = record.steps[epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]
        assert [a for _, a in steps] == [str(replay.sample(s)) for s, _ in steps]
    # The controller learned: its weights left the seeded initial ones.
    initial = fresh_sampler().controller.state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in sampler.controller.state_dict().items())
    assert {"controller/reward", "controller/baseline", "controller/entropy"} <= set(t.logged_metrics)
    projection = [c for c in t.callbacks if isinstance(c, ProjectionMatrixUpdate)]
    assert len(projection) == 1 and projection[0].updates == 3 * STEPS_PER_EPOCH


def test_rewards_are_inherited_accuracy_on_one_supernet_val_batch(full_run) -> None:
    """Replay epoch 1's controller updates outside Lightning: the evaluator on the supernet as it
    was, on batches drawn from (seed, epoch), gives the controller, baseline and rewards of the run."""
    _, record, _, _ = full_run
    weights, state = record.before_updates[1]
    supernet = make_space().build_supernet()
    supernet.load_state_dict(weights)
    replay = fresh_sampler(state)
    data = make_data()
    data.setup("fit")
    batches = list(seeded_batches(data.val_dataloader(), UPDATES, step_generator(SEED, "controller_batches", 1)))
    assert len(batches) == UPDATES and all(len(y) == 16 for _, y in batches)
    stats = controller_updates(replay, batches, lambda archs, b: evaluate_archs(supernet, archs, [b]).accuracy / 100,
                               ARCHS)
    after = record.epoch_start[2]
    assert replay.baseline == pytest.approx(after["baseline"], abs=1e-12)
    assert replay.history == after["history"]
    for k, v in replay.controller.state_dict().items():
        torch.testing.assert_close(v, after["controller"][k], rtol=0, atol=0, msg=k)
    # A reward is a count of correct images over one batch of 16.
    for s in stats:
        assert s["reward"] * 16 * ARCHS == pytest.approx(round(s["reward"] * 16 * ARCHS))


def test_the_controller_exports_its_argmax_and_best_archs(full_run) -> None:
    model, _, _, root = full_run
    sampler = model.controller
    out = json.loads((root / "controller" / "controller_archs.json").read_text())
    assert out["argmax"]["arch"] == str(sampler.controller.argmax_arch())
    assert out["num_updates"] == 2 * UPDATES and out["baseline"] == pytest.approx(sampler.baseline)
    assert sum(c for c, _, _ in sampler.history.values()) == 2 * UPDATES * ARCHS
    assert len(out["top"]) == min(10, len(sampler.history))
    means = [row["mean_reward"] for row in out["top"]]
    assert means == sorted(means, reverse=True)
    best = max(sampler.history.items(), key=lambda kv: kv[1][1] / kv[1][0])
    assert out["top"][0]["mean_reward"] == pytest.approx(best[1][1] / best[1][0])
    assert out["top"][0]["params"] == make_space().params(make_space().decode(out["top"][0]["arch"]))


def _assert_same_search_state(a: DINAS, b: DINAS) -> None:
    sa, sb = a.controller.state_dict(), b.controller.state_dict()
    assert {k: sa[k] for k in ("seed", "start_step", "baseline", "num_updates", "last_update_epoch", "history")} == \
        {k: sb[k] for k in ("seed", "start_step", "baseline", "num_updates", "last_update_epoch", "history")}
    for k, v in sa["controller"].items():
        torch.testing.assert_close(sb["controller"][k], v, rtol=1e-6, atol=1e-7, msg=k)
    for (name, p), q in zip(a.supernet.named_parameters(), b.supernet.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_from_an_epoch_checkpoint_gives_the_uninterrupted_run(full_run, tmp_path: Path) -> None:
    full, full_record, full_trainer, _ = full_run
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    pl.seed_everything(0)
    trainer(tmp_path / "a", 2, [ckpt]).fit(make_model(), datamodule=make_data())
    pl.seed_everything(123)  # a resumed process starts from other global RNG state
    resumed, record = make_model(), Record()
    t = trainer(tmp_path / "b", 3, [record])
    t.fit(resumed, datamodule=make_data(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert record.steps == full_record.steps[2 * STEPS_PER_EPOCH:]
    _assert_same_search_state(full, resumed)
    (p_full,) = [c for c in full_trainer.callbacks if isinstance(c, ProjectionMatrixUpdate)]
    (p_res,) = [c for c in t.callbacks if isinstance(c, ProjectionMatrixUpdate)]
    assert p_res.updates == p_full.updates and set(p_res.P) == set(p_full.P)
    for name, P in p_full.P.items():
        torch.testing.assert_close(p_res.P[name], P, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_from_a_mid_epoch_checkpoint_gives_the_uninterrupted_run(full_run, tmp_path: Path) -> None:
    """Killed in the middle of the first controller epoch (step 6 of 12): the resumed run keeps the
    controller's start step and samples what the uninterrupted run sampled."""
    full, full_record, _, _ = full_run
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6, save_top_k=-1)
    pl.seed_everything(0)
    trainer(tmp_path / "a", 3, [ckpt], max_steps=6).fit(make_model(), datamodule=make_data())
    (path,) = (tmp_path / "ckpt").glob("*step=6.ckpt")
    pl.seed_everything(1)
    resumed, record = make_model(), Record()
    trainer(tmp_path / "b", 3, [record]).fit(resumed, datamodule=make_data(), ckpt_path=str(path))
    assert record.steps == full_record.steps[6:]
    _assert_same_search_state(full, resumed)


def test_resume_from_a_checkpoint_written_before_the_epochs_updates(full_run, tmp_path: Path) -> None:
    """A checkpoint saved at validation end holds epoch 1's weights but not its controller updates;
    the resumed run replays epoch 1's end, runs them, and continues as the uninterrupted run."""
    full, full_record, _, _ = full_run
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, save_on_train_epoch_end=False)
    pl.seed_everything(0)
    trainer(tmp_path / "a", 2, [ckpt]).fit(make_model(), datamodule=make_data())
    path = tmp_path / "ckpt" / f"epoch=1-step={2 * STEPS_PER_EPOCH}.ckpt"
    saved = torch.load(path, weights_only=False)["nas_sampler"]
    assert (saved["num_updates"], saved["last_update_epoch"]) == (0, -1)
    resumed, record = make_model(), Record()
    trainer(tmp_path / "b", 3, [record]).fit(resumed, datamodule=make_data(), ckpt_path=str(path))
    assert record.steps == full_record.steps[2 * STEPS_PER_EPOCH:]
    _assert_same_search_state(full, resumed)


def test_disturbance_matrix_trains_with_the_projection(full_run) -> None:
    """DisturbanceMetrics's matrix uses the method's own step: with DI-NAS, ProjectionMatrixUpdate's rule
    (its P, at its alpha); the rule's P starts as a copy of the run's."""
    model, _, t, _ = full_run
    factory = DisturbanceMetrics._step_rule(t)
    projection = next(c for c in t.callbacks if isinstance(c, ProjectionMatrixUpdate))
    rule = factory(copy.deepcopy(model.supernet))
    assert isinstance(rule, ProjectedSteps) and rule.alpha == projection.alpha and set(rule.P) == set(projection.P)
    assert rule.projector.alpha_scale == projection.alpha_scale == "energy"
    assert all(torch.equal(rule.P[n], projection.P[n]) and rule.P[n] is not projection.P[n] for n in rule.P)
    rule.close()
    plain = trainer(Path(t.default_root_dir), 1, [ControllerStep(start_epoch=5)], dinas=False)
    assert DisturbanceMetrics._step_rule(plain) is None


def test_dinas_fails_at_setup_without_its_callbacks_and_projection_can_be_turned_off(tmp_path: Path) -> None:
    def run(model: DINAS, callbacks: list[pl.Callback]) -> None:
        trainer(tmp_path, 1, callbacks, dinas=False, enable_checkpointing=False, limit_train_batches=1,
                limit_val_batches=1).fit(model, datamodule=make_data())

    with pytest.raises(RuntimeError, match=r"DINAS needs the callback\(s\) ControllerStep, ProjectionMatrixUpdate"):
        run(make_model(), [])
    with pytest.raises(RuntimeError, match=r"needs the callback\(s\) ProjectionMatrixUpdate: add "
                                           r"`- class_path: callbacks.ProjectionMatrixUpdate`"):
        run(make_model(), dinas_callbacks(projection=False))
    run(make_model(projection=False), dinas_callbacks(projection=False))  # the plain weight-sharing ablation
    # The ablation from a DI-NAS config (which lists the callback): the callback stays off, P is never built.
    ablation, callbacks = make_model(projection=False), dinas_callbacks()
    run(ablation, callbacks)
    assert not callbacks[1].enabled and callbacks[1].P == {} and callbacks[1].updates == 0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ControllerStep(steps_per_epoch=0)


def test_controller_step_needs_a_controller_sampler(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ControllerSampler"):
        trainer(tmp_path, 1, [ControllerStep(start_epoch=0)], dinas=False, enable_checkpointing=False).fit(
            SPOS(make_space()), datamodule=make_data())


@pytest.mark.slow
def test_ddp_ranks_keep_identical_controllers(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["archs"] == r1["archs"] and len(r0["archs"]) == 3 * r0["steps_per_epoch"]
    for key in ("seed", "start_step", "baseline", "num_updates", "last_update_epoch", "history"):
        assert r0["sampler"][key] == r1["sampler"][key], key
    assert r0["sampler"]["num_updates"] == 2 * UPDATES
    for k, v in r0["sampler"]["controller"].items():
        torch.testing.assert_close(r1["sampler"]["controller"][k], v, rtol=0, atol=0, msg=k)
    for k, v in r0["sampler"]["optimizer"]["state"].items():
        torch.testing.assert_close(r1["sampler"]["optimizer"]["state"][k], v, rtol=0, atol=0)
    for name, P in r0["P"].items():
        torch.testing.assert_close(r1["P"][name], P, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(r1["matrix"], r0["matrix"], rtol=0, atol=0)  # trained with the projection, per rank
    # What one process would draw: uniform warm-up, then the untrained controller's draws in epoch 1.
    n = r0["steps_per_epoch"]
    uniform = UniformSampler(make_space(), seed=SEED)
    initial = fresh_sampler()
    initial.start(n)
    assert r0["archs"][:2 * n] == [str(uniform.sample(s)) for s in range(n)] + [str(initial.sample(s))
                                                                                  for s in range(n, 2 * n)]
    assert any(not torch.equal(v, initial.controller.state_dict()[k]) for k, v in r0["sampler"]["controller"].items())


def test_dinas_on_the_darts_space_projects_every_conv_that_ran(tmp_path: Path) -> None:
    """The paper's space: separable and dilated convs are depthwise (one P per channel group) and
    FactorizedReduce runs two convs on shifted inputs. After a warm-up epoch and a controller epoch,
    every conv and the classifier that ran has a P of its layout's shape, a conv off every path has none,
    and the exported archs decode in the DARTS grammar."""
    space = DartsSpace(C=4, layers=3, num_classes=4, in_channels=3, input_size=8)
    data = SyntheticDataModule(num_classes=4, in_channels=3, image_size=8, num_train=96, num_test=16, noise=0.5,
                               batch_size=16, eval_batch_size=16, val_fraction=1 / 3, seed=0)
    model = DINAS(space, partial(ControllerSampler, hidden_size=16), seed=SEED, num_eval_archs=1,
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    projection = ProjectionMatrixUpdate(max_patches=4, seed=SEED)
    callbacks = [ControllerStep(start_epoch=1, steps_per_epoch=2, archs_per_step=2,
                                output_dir=str(tmp_path / "controller")), projection]
    trainer(tmp_path, 2, callbacks, dinas=False, enable_checkpointing=False, limit_val_batches=1).fit(
        model, datamodule=data)

    convs = {n: m for n, m in model.supernet.named_modules() if isinstance(m, torch.nn.Conv2d)}
    (classifier,) = [n for n, m in model.supernet.named_modules() if isinstance(m, torch.nn.Linear)]
    assert projection.P and set(projection.P) <= set(convs) | {classifier}
    depthwise = [n for n in projection.P if n in convs and convs[n].groups > 1]
    assert depthwise and any(".preprocess" in n or "stem" in n for n in projection.P)
    for name, P in projection.P.items():
        layout = projection.projector.layouts[name]
        assert P.shape == ((layout.dim, layout.dim) if layout.groups == 1 else (layout.groups, layout.dim, layout.dim))
        assert not torch.equal(P, layout.identity()) and torch.isfinite(P).all()
    assert len(projection.P) < len(convs) + 1  # ops on no trained path keep P = I (not created)
    exported = json.loads((tmp_path / "controller" / "controller_archs.json").read_text())
    assert space.decode(exported["argmax"]["arch"]) is not None
