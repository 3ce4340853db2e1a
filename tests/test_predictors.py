"""Predictors (WPNAS, arXiv:2203.02086 section 3.2, Fig. 2, Table 2): encoding, the few-shot relation rule on a
hand-worked case, learning a known synthetic ranking, the supervised baselines, the predictor file and the
``train-predictor`` command's errors."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from scipy import stats

from nas_lightning.cli import main
from nas_lightning.commands.train_predictor import train_predictor
from nas_lightning.metrics.ground_truth import GroundTruth, save_ground_truth
from nas_lightning.predictors import (
    ENCODERS,
    FewShotPredictor,
    PredictorFileError,
    SupervisedPredictor,
    TrainSettings,
    arch_indices,
    build_predictor,
    choice_counts,
    fit_predictor,
    load_predictor,
    one_hot,
    pairwise_hinge_loss,
    predictor_metrics,
    save_predictor,
)
from nas_lightning.spaces import ChainSpace, NB201Space

NB201 = NB201Space(C=4, N=1)  # 6 decisions x 5 choices


def adam(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def synthetic(n: int, seed: int = 0) -> tuple[list, torch.Tensor]:
    """``n`` distinct NB201 archs and accuracy = 70 + 2 * (one-hot . w) for a fixed random w: a known ranking."""
    gen = torch.Generator().manual_seed(seed)
    archs = list(dict.fromkeys(NB201.sample_many(3 * n, gen)))[:n]
    w = torch.randn(sum(choice_counts(NB201)), generator=torch.Generator().manual_seed(123))
    return archs, 70 + 2 * one_hot(arch_indices(NB201, archs), choice_counts(NB201)) @ w


def test_one_hot_of_the_decision_list_by_hand() -> None:
    space = ChainSpace(num_layers=3, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect"))
    archs = [space.arch([0, 1, 2]), space.arch([2, 2, 0])]
    expected = torch.tensor([[1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 1, 0, 0, 1, 1, 0, 0]], dtype=torch.float32)
    assert torch.equal(one_hot(arch_indices(space, archs), choice_counts(space)), expected)


def test_pairwise_hinge_loss_by_hand() -> None:
    # pairs with t_i > t_j: (b, a): gap 0.05 -> 0.05; (c, a): gap 1.0 -> 0; (c, b): gap 0.95 -> 0.  Mean 0.05 / 3.
    loss = pairwise_hinge_loss(torch.tensor([0.0, 0.05, 1.0]), torch.tensor([1.0, 2.0, 3.0]), margin=0.1)
    assert float(loss) == pytest.approx(0.05 / 3)
    assert float(pairwise_hinge_loss(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 5.0]), margin=0.1)) == 0.0


def hand_set_predictor() -> tuple[ChainSpace, FewShotPredictor]:
    """Two decisions of two choices; the encoder is the one-hot, the decoder computes a . (q - s) with
    a = [1, 2, 3, 5], so offset_i = a . onehot(query) - a . onehot(support_i)."""
    space = ChainSpace(num_layers=2, ops=("nor_conv_1x1", "skip_connect"))
    model = FewShotPredictor(space, encoder="mlp", hidden=4, num_layers=1, support_size=2)
    a = torch.tensor([1.0, 2.0, 3.0, 5.0])
    with torch.no_grad():
        model.encoder.net[0].weight.copy_(torch.eye(4))
        model.encoder.net[0].bias.zero_()
        first, last = model.decoder[0], model.decoder[2]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0] = torch.cat([a, -a])  # relu(d) - relu(-d) = d
        first.weight[1] = torch.cat([-a, a])
        last.weight.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0]]))
        last.bias.zero_()
    model.set_support(arch_indices(space, [space.arch([0, 0]), space.arch([1, 1])]), torch.tensor([70.0, 80.0]))
    return space, model


def test_prediction_is_the_mean_over_the_support_of_accuracy_plus_offset() -> None:
    space, model = hand_set_predictor()
    # a . onehot: (0, 0) -> 1 + 3 = 4, (1, 1) -> 2 + 5 = 7, (0, 1) -> 1 + 5 = 6, (1, 0) -> 2 + 3 = 5.
    # (0, 1): offsets 6 - 4 = 2, 6 - 7 = -1 -> mean(72, 79) = 75.5;  (1, 0): 1, -2 -> mean(71, 78) = 74.5.
    pred = model.predict([space.arch([0, 1]), space.arch([1, 0])])
    assert pred.tolist() == pytest.approx([75.5, 74.5])
    # The decoder's split first layer equals the decoder applied to the concatenation [enc(q), enc(s)].
    q, s = arch_indices(space, [space.arch([0, 1])]), model.support_indices
    pairs = torch.cat([model.encoder(q).expand(2, -1), model.encoder(s)], dim=1)
    assert model.offsets(q, s)[0].tolist() == pytest.approx(model.decoder(pairs).squeeze(-1).tolist())


def test_prediction_rule_with_trained_weights_and_scaled_targets() -> None:
    archs, acc = synthetic(60)
    model = build_predictor("few_shot", NB201, 0, hidden=16, support_size=10)
    fit_predictor(model, arch_indices(NB201, archs[:40]), acc[:40], adam, TrainSettings(epochs=3))
    q = arch_indices(NB201, archs[40:])
    offsets = model.offsets(q, model.support_indices)
    expected = (model.support_accuracy[None, :] + offsets).mean(1)
    assert torch.allclose(model.predict(archs[40:]), expected.detach(), atol=1e-4)
    assert float(model.target_std) == pytest.approx(float(acc[:40].std()))


@pytest.mark.parametrize("shuffle_targets", [False, True])
def test_few_shot_predictor_learns_a_known_ranking(shuffle_targets: bool) -> None:
    archs, acc = synthetic(270)
    train_acc = acc[:170]
    if shuffle_targets:  # a planted bug: accuracies no longer belong to their archs
        train_acc = train_acc[torch.randperm(170, generator=torch.Generator().manual_seed(1))]
    model = build_predictor("few_shot", NB201, 0, hidden=32, support_size=30)
    fit_predictor(model, arch_indices(NB201, archs[:170]), train_acc, adam, TrainSettings(epochs=40))
    tau = predictor_metrics(model.predict(archs[170:]), acc[170:])["kendall_tau"]
    if shuffle_targets:
        assert abs(tau) < 0.3
    else:
        assert tau > 0.8


@pytest.mark.parametrize("kind", ["supervised", "few_shot"])
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_every_encoder_and_kind_trains(kind: str, encoder: str) -> None:
    archs, acc = synthetic(150)
    extra = {"support_size": 10} if kind == "few_shot" else {}
    model = build_predictor(kind, NB201, 0, encoder=encoder, hidden=16, **extra)
    idx = arch_indices(NB201, archs[:100])
    before = predictor_metrics(model.predict(archs[100:]), acc[100:])["kendall_tau"]
    history = fit_predictor(model, idx, acc[:100], lambda p: torch.optim.Adam(p, lr=3e-3), TrainSettings(epochs=15))
    after = predictor_metrics(model.predict(archs[100:]), acc[100:])["kendall_tau"]
    assert history[-1] < history[0]
    assert after > 0.5 and after > before + 0.2


def test_training_is_seeded_and_loading_is_deterministic(tmp_path: Path) -> None:
    archs, acc = synthetic(80)
    idx = arch_indices(NB201, archs[:60])
    models = []
    for _ in range(2):
        model = build_predictor("few_shot", NB201, 5, encoder="lstm", hidden=8, support_size=10)
        fit_predictor(model, idx, acc[:60], adam, TrainSettings(epochs=2, seed=5))
        models.append(model)
    a, b = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise: two processes loading this file agree exactly
    save_predictor(tmp_path / "p.pt", models[0], "few_shot")
    loaded = [load_predictor(tmp_path / "p.pt", NB201) for _ in range(2)]
    out = [m.predict(archs) for m in loaded]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], models[0].predict(archs))
    assert loaded[0].support_archs == models[0].support_archs
    # One batched call: an arch's prediction does not depend on the other archs of the batch.
    alone = torch.cat([loaded[0].predict([a]) for a in archs[:5]])
    assert torch.allclose(out[0][:5], alone, atol=1e-5)
    assert out[0].shape == (80,) and not out[0].requires_grad


def test_supervised_file_round_trip(tmp_path: Path) -> None:
    archs, acc = synthetic(40)
    model = build_predictor("supervised", NB201, 0, encoder="transformer", hidden=8, heads=2)
    fit_predictor(model, arch_indices(NB201, archs), acc, adam, TrainSettings(epochs=1))
    save_predictor(tmp_path / "s.pt", model, "supervised")
    loaded = load_predictor(tmp_path / "s.pt", NB201)
    assert isinstance(loaded, SupervisedPredictor)
    assert torch.equal(loaded.predict(archs), model.predict(archs))


def test_a_predictor_of_another_space_or_arch_format_is_refused(tmp_path: Path) -> None:
    model = build_predictor("few_shot", NB201, 0, hidden=8, support_size=2)
    path = tmp_path / "nb201.pt"
    save_predictor(path, model, "few_shot")
    with pytest.raises(PredictorFileError, match=r"nb201\.pt.*another space.*ChainSpace"):
        load_predictor(path, ChainSpace())
    chain = ChainSpace(num_layers=2)
    chain_path = tmp_path / "chain.pt"
    save_predictor(chain_path, build_predictor("supervised", chain, 0, hidden=8), "supervised")
    with pytest.raises(PredictorFileError, match=r"chain\.pt.*choices .* at decision"):
        load_predictor(chain_path, ChainSpace(num_layers=2, ops=("nor_conv_1x1", "skip_connect")))
    with pytest.raises(PredictorFileError, match=r"chain\.pt.*decisions"):
        load_predictor(chain_path, ChainSpace(num_layers=3))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a predictor")
    with pytest.raises(PredictorFileError, match=r"junk\.pt"):
        load_predictor(junk, NB201)


def test_predictor_metrics_match_scipy() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.randint(0, 6, (40,), generator=gen).double()  # ties in both, as rounded accuracies have
    t = torch.randint(0, 8, (40,), generator=gen).double() + 0.5 * p
    m = predictor_metrics(p, t)
    assert m["kendall_tau"] == pytest.approx(stats.kendalltau(p.numpy(), t.numpy()).statistic, abs=1e-6)
    assert m["pearson"] == pytest.approx(stats.pearsonr(p.numpy(), t.numpy()).statistic, abs=1e-6)
    assert m["mse"] == pytest.approx(float(((p - t) ** 2).mean()))


@pytest.fixture
def results_file(tmp_path: Path) -> Path:
    archs, acc = synthetic(50)
    path = tmp_path / "gt.csv"
    save_ground_truth(path, GroundTruth(dict(zip(archs, acc.tolist()))), NB201)
    return path


def test_train_predictor_command_writes_predictor_and_metrics(results_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred" / "fs.pt"
    main(["train-predictor", "--space", "nas_lightning.spaces.NB201Space", "--space.C", "4", "--space.N", "1",
          "--results", str(results_file), "--output", str(out), "--train_size", "40", "--val_size", "10",
          "--support_size", "8", "--hidden", "16", "--epochs", "20", "--encoder", "mlp"])
    metrics = json.loads(out.with_name("fs.pt.metrics.json").read_text())
    assert metrics["kind"] == "few_shot" and len(metrics["train_archs"]) == 40 and len(metrics["val_archs"]) == 10
    assert not set(metrics["train_archs"]) & set(metrics["val_archs"])
    val = out.with_name("fs.pt.val.csv").read_text().splitlines()
    assert val[0] == "arch,accuracy,predicted" and len(val) == 11
    predictor = load_predictor(out, NB201)
    held_out = [NB201.decode(a) for a in metrics["val_archs"]]
    gt = {line.split(",")[0]: float(line.split(",")[1]) for line in val[1:]}
    recomputed = predictor_metrics(predictor.predict(held_out), torch.tensor([gt[str(a)] for a in held_out]))
    assert recomputed["kendall_tau"] == pytest.approx(metrics["kendall_tau"])
    assert out.with_name("fs.pt.metrics.csv").read_text().startswith("results,kind,encoder")


def test_train_predictor_bad_input_is_named(results_file: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="support_size=40 must be smaller than train_size=40"):
        train_predictor(NB201, str(results_file), out, train_size=40, val_size=10, support_size=40)
    with pytest.raises(ValueError, match=r"gt\.csv has 50 archs, fewer than train_size \+ val_size = 170 \+ 30"):
        train_predictor(NB201, str(results_file), out)
    with pytest.raises(ValueError, match=r"results file .*gt\.csv covers no arch of ChainSpace"):
        train_predictor(ChainSpace(), str(results_file), out, train_size=40, val_size=10)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match=r"empty\.json covers no arch of NB201Space"):
        train_predictor(NB201, str(empty), out, train_size=40, val_size=10)
