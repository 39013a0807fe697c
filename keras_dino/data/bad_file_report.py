"""`BadFileReport` lives in the TensorFlow-free `keras_dino.numpy_data`."""

from keras_dino.numpy_data.bad_file_report import BadFileReport

__all__ = ["BadFileReport"]
