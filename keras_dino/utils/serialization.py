"""Serialisation helpers for models that wrap a backbone."""

import keras


def with_deserialized_backbone(config):
    """A copy of `config` whose `"backbone"` entry is a live model again."""
    config = dict(config)
    config["backbone"] = keras.saving.deserialize_keras_object(
        config["backbone"]
    )
    return config
