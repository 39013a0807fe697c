"""DINO evaluation: frozen features, k-NN, linear probe, attention maps.

Evaluation takes arrays or datasets; reading images (folders, `.npz`,
TFDS, the recipes' source strings) and the evaluation transform live in
`keras_dino.data`. Imports neither TensorFlow nor matplotlib at import
time.
"""

from keras_dino.evaluation.attention_maps import attention_maps
from keras_dino.evaluation.attention_maps import save_attention_figure
from keras_dino.evaluation.attention_maps import save_attention_maps
from keras_dino.evaluation.attention_maps import threshold_masks
from keras_dino.evaluation.attention_maps import upsample_nearest
from keras_dino.evaluation.attention_maps import visualize_attention
from keras_dino.evaluation.backbone import load_backbone
from keras_dino.evaluation.features import extract_features
from keras_dino.evaluation.features import l2_normalize
from keras_dino.evaluation.knn import knn_classify
from keras_dino.evaluation.knn import knn_evaluate
from keras_dino.evaluation.knn import paired_sign_test
from keras_dino.evaluation.knn_monitor import KNNMonitor
from keras_dino.evaluation.linear_classifier import build_linear_classifier
from keras_dino.evaluation.linear_classifier import (
    load_reference_linear_weights,
)
from keras_dino.evaluation.linear_probe import LinearProbe
from keras_dino.evaluation.linear_probe import ProbeFeatureExtractor
from keras_dino.evaluation.linear_probe import build_linear_probe
from keras_dino.evaluation.linear_probe_training import fit_linear_classifier
from keras_dino.evaluation.linear_probe_training import fit_linear_probe

__all__ = [
    "KNNMonitor",
    "LinearProbe",
    "ProbeFeatureExtractor",
    "attention_maps",
    "build_linear_classifier",
    "build_linear_probe",
    "extract_features",
    "fit_linear_classifier",
    "fit_linear_probe",
    "knn_classify",
    "knn_evaluate",
    "l2_normalize",
    "load_backbone",
    "load_reference_linear_weights",
    "paired_sign_test",
    "save_attention_figure",
    "save_attention_maps",
    "threshold_masks",
    "upsample_nearest",
    "visualize_attention",
]
