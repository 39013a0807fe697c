"""DINO evaluation: frozen features, k-NN, linear probe, attention maps.

Imports neither TensorFlow nor Pillow/matplotlib at import time.
"""

from keras_dino.evaluation.attention_maps import attention_maps
from keras_dino.evaluation.attention_maps import crop_to_patch_multiple
from keras_dino.evaluation.attention_maps import save_attention_figure
from keras_dino.evaluation.attention_maps import save_attention_maps
from keras_dino.evaluation.attention_maps import threshold_masks
from keras_dino.evaluation.attention_maps import upsample_nearest
from keras_dino.evaluation.attention_maps import visualize_attention
from keras_dino.evaluation.features import IMAGENET_MEAN
from keras_dino.evaluation.features import IMAGENET_STD
from keras_dino.evaluation.features import extract_features
from keras_dino.evaluation.features import imagenet_preprocessing
from keras_dino.evaluation.features import l2_normalize
from keras_dino.evaluation.features import preprocess_images
from keras_dino.evaluation.knn import knn_classify
from keras_dino.evaluation.knn import knn_evaluate
from keras_dino.evaluation.knn import paired_sign_test
from keras_dino.evaluation.linear_probe import EpochCosineDecay
from keras_dino.evaluation.linear_probe import LinearProbe
from keras_dino.evaluation.linear_probe import LinearProbeImages
from keras_dino.evaluation.linear_probe import ProbeFeatureExtractor
from keras_dino.evaluation.linear_probe import build_linear_classifier
from keras_dino.evaluation.linear_probe import build_linear_probe
from keras_dino.evaluation.linear_probe import fit_linear_classifier
from keras_dino.evaluation.linear_probe import fit_linear_probe
from keras_dino.evaluation.linear_probe import linear_probe_learning_rate
from keras_dino.evaluation.linear_probe import load_reference_linear_weights
from keras_dino.evaluation.linear_probe import random_resized_crop_box
from keras_dino.evaluation.loading import labeled_dataset
from keras_dino.evaluation.loading import load_backbone
from keras_dino.evaluation.loading import load_image
from keras_dino.evaluation.loading import load_image_folder
from keras_dino.evaluation.loading import load_labeled_images
from keras_dino.evaluation.loading import load_npz

__all__ = [
    "EpochCosineDecay",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LinearProbe",
    "LinearProbeImages",
    "ProbeFeatureExtractor",
    "attention_maps",
    "build_linear_classifier",
    "build_linear_probe",
    "crop_to_patch_multiple",
    "extract_features",
    "fit_linear_classifier",
    "fit_linear_probe",
    "imagenet_preprocessing",
    "knn_classify",
    "knn_evaluate",
    "paired_sign_test",
    "l2_normalize",
    "labeled_dataset",
    "linear_probe_learning_rate",
    "load_backbone",
    "load_image",
    "load_image_folder",
    "load_labeled_images",
    "load_npz",
    "load_reference_linear_weights",
    "preprocess_images",
    "random_resized_crop_box",
    "save_attention_figure",
    "save_attention_maps",
    "threshold_masks",
    "upsample_nearest",
    "visualize_attention",
]
