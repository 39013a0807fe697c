"""tf.data input pipelines for DINO: multi-crop augmentation and readers.

This is the only part of `keras_dino` that imports TensorFlow. It reads
folders, `.npz` files, TFDS and the source strings of the recipes
(`"a.npz,b.npz"`, a folder, `"tfds:<name>:<split>"`); the pipelines feed
`fit` and `keras_dino.evaluation` on every Keras backend. Without
TensorFlow, `keras_dino.numpy_data` reads image folders for the device-side
multi-crop augmentation.
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
from keras_dino.data.multi_crop import MultiCropAugmentation
from keras_dino.data.random_resized_crop import RandomResizedCropTransform
from keras_dino.data.random_resized_crop import sample_crop_boxes
from keras_dino.data.sources import labeled_dataset
from keras_dino.data.sources import load_image
from keras_dino.data.sources import load_labeled_images
from keras_dino.data.sources import parse_source
from keras_dino.data.tfds import from_tfds
from keras_dino.layers.preprocessing import IMAGENET_MEAN
from keras_dino.layers.preprocessing import IMAGENET_STD

__all__ = [
    "BadFileReport",
    "CenterCropTransform",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "MultiCropAugmentation",
    "RandomResizedCropTransform",
    "decode_image",
    "from_arrays",
    "from_image_folder",
    "from_npz",
    "from_tfds",
    "labeled_dataset",
    "list_image_files",
    "load_image",
    "load_labeled_images",
    "load_npz",
    "parse_source",
    "sample_crop_boxes",
]
