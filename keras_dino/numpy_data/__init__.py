"""TensorFlow-free input for DINO: NumPy and PIL on the host.

For JAX and PyTorch machines without TensorFlow. The host reads and decodes
images and samples the multi-crop parameters (crop boxes, flips, colour
jitter, blur, solarisation) with NumPy; the crops themselves are computed
on the accelerator, in the training step, by
`keras_dino.layers.DeviceMultiCropAugmentation`. Nothing here imports
TensorFlow.
"""
