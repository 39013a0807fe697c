"""TensorFlow-free input for DINO: NumPy and PIL on the host.

For JAX and PyTorch machines without TensorFlow. The host reads and decodes
images and samples the multi-crop parameters (crop boxes, flips, colour
jitter, blur, solarisation) with NumPy; the crops themselves are computed
on the accelerator, in the training step, by
`keras_dino.layers.DeviceMultiCropAugmentation`. Nothing here imports
TensorFlow.
"""

from keras_dino.numpy_data.bad_file_report import BadFileReport
from keras_dino.numpy_data.crop_boxes import crop_boxes_from_uniforms
from keras_dino.numpy_data.image_files import IMAGE_EXTENSIONS
from keras_dino.numpy_data.image_files import list_image_files
from keras_dino.numpy_data.image_folder import ImageFolderDataset
from keras_dino.numpy_data.image_folder import decode_file
from keras_dino.numpy_data.multi_crop_sampler import MultiCropSampler

__all__ = [
    "BadFileReport",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "MultiCropSampler",
    "crop_boxes_from_uniforms",
    "decode_file",
    "list_image_files",
]
