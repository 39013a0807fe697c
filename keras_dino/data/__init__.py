"""tf.data input pipelines for DINO: multi-crop augmentation and readers.

This is the only part of `keras_dino` that imports TensorFlow; the pipelines
feed `fit` on every Keras backend.
"""

from keras_dino.data.arrays import from_arrays
from keras_dino.data.arrays import from_npz
from keras_dino.data.arrays import load_npz
from keras_dino.data.bad_file_report import BadFileReport
from keras_dino.data.center_crop import CenterCropTransform
from keras_dino.data.image_folder import IMAGE_EXTENSIONS
from keras_dino.data.image_folder import decode_image
from keras_dino.data.image_folder import from_image_folder
from keras_dino.data.image_folder import list_image_files
from keras_dino.data.multi_crop import IMAGENET_MEAN
from keras_dino.data.multi_crop import IMAGENET_STD
from keras_dino.data.multi_crop import MultiCropAugmentation
from keras_dino.data.random_resized_crop import sample_crop_boxes
from keras_dino.data.tfds import from_tfds

__all__ = [
    "BadFileReport",
    "CenterCropTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "MultiCropAugmentation",
    "decode_image",
    "from_arrays",
    "from_image_folder",
    "from_npz",
    "from_tfds",
    "list_image_files",
    "load_npz",
    "sample_crop_boxes",
]
