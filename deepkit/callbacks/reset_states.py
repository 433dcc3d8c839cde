"""ResetStates: start each epoch and each evaluation of a stateful model from zeros."""

import keras

from deepkit.callbacks._config import FromConfig
from deepkit.export import export


def stateful_layers(model):
    """The layers of `model`, nested ones included, that carry state across batches.

    A layer counts when it has ``stateful=True`` and a `reset_state` method
    (Keras' RNN layers); wrappers (`Bidirectional`, `TimeDistributed`) and
    nested models are searched through their public `layers`,
    `forward_layer`, `backward_layer` and `layer` attributes.
    """
    found, stack, seen = [], list(getattr(model, "layers", []) or []), set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if getattr(layer, "stateful", False) and hasattr(layer, "reset_state"):
            found.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
        for attr in ("forward_layer", "backward_layer", "layer"):
            inner = getattr(layer, attr, None)
            if isinstance(inner, keras.layers.Layer):
                stack.append(inner)
    return found


def reset_states(model):
    """Zero the state of every stateful layer of `model`; returns how many."""
    layers = stateful_layers(model)
    for layer in layers:
        layer.reset_state()
    return len(layers)


@export
class ResetStates(FromConfig, keras.callbacks.Callback):
    """Start every epoch, validation pass and evaluation of a stateful model from zeros.

    A stateful RNN (``stateful=True``, trained by truncated backpropagation
    through time on consecutive windows) carries its state from batch to
    batch; Keras resets it nowhere. This callback resets it at the start of
    each epoch and of each validation or `evaluate` pass, so every pass
    reads the sequence from its beginning, as Mikolov's and Pascanu et al.'s
    language-model protocols do.

    Example:

    ```python
    model.fit(windows, epochs=10, shuffle=False, validation_data=valid,
              callbacks=[ResetStates()])
    ```

    Reference: Pascanu, Gulcehre, Cho, Bengio 2014, "How to Construct Deep
    Recurrent Neural Networks", ICLR 2014, arXiv:1312.6026 (the PTB
    protocol: hidden state carried across consecutive segments).
    """

    def get_config(self):
        return {}

    def on_epoch_begin(self, epoch, logs=None):
        reset_states(self.model)

    def on_test_begin(self, logs=None):
        reset_states(self.model)
