"""Distribution helpers that hide backend details from the models."""

import keras


def num_replicas_in_sync():
    """Replicas of the current `tf.distribute` strategy (1 elsewhere)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_loss_for_replicas(loss):
    """Divides a per-replica loss by the number of replicas in sync.

    Under `tf.distribute` each replica's gradients are summed, so a loss
    averaged over the local batch must be divided by the replica count to
    give the gradient of the global-batch mean. Keras does this inside
    `keras.losses`; a hand-written loss must do it itself.
    """
    replicas = num_replicas_in_sync()
    return loss / replicas if replicas > 1 else loss
