"""Keras serialization for deepkit's callbacks."""


class FromConfig:
    """`from_config` for a callback whose `get_config` holds its constructor
    arguments, so `keras.saving.deserialize_keras_object` can rebuild it
    (`keras.callbacks.Callback` has `get_config` but no `from_config`)."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)
