"""Accuracy predictors over archs (Lin et al., WPNAS, arXiv:2203.02086, section 3.2, Fig. 2, Table 2): arch
encoding, encoders chosen by name, the few-shot relation-network predictor and the supervised baselines, their
training, and the predictor file that the WPNAS search loads."""

from nas_lightning.predictors.encoders import ENCODERS, ArchEncoder, LSTMEncoder, MLPEncoder, TransformerEncoder
from nas_lightning.predictors.encoding import arch_indices, choice_counts, choice_offsets, one_hot
from nas_lightning.predictors.file import PredictorFileError, load_predictor, save_predictor, space_record
from nas_lightning.predictors.predictor import PREDICTORS, ArchPredictor, FewShotPredictor, SupervisedPredictor
from nas_lightning.predictors.training import (
    TrainSettings,
    build_predictor,
    fit_predictor,
    pairwise_hinge_loss,
    predictor_metrics,
)

__all__ = [
    "ENCODERS",
    "PREDICTORS",
    "ArchEncoder",
    "ArchPredictor",
    "FewShotPredictor",
    "LSTMEncoder",
    "MLPEncoder",
    "PredictorFileError",
    "SupervisedPredictor",
    "TrainSettings",
    "TransformerEncoder",
    "arch_indices",
    "build_predictor",
    "choice_counts",
    "choice_offsets",
    "fit_predictor",
    "load_predictor",
    "one_hot",
    "pairwise_hinge_loss",
    "predictor_metrics",
    "save_predictor",
    "space_record",
]
