"""What one training step needs from the distribution backend, in one place.

Under a `tf.distribute` strategy, `optimizer.apply` runs once per replica,
on that replica's share of the gradient; Keras' optimizers sum the shares
across replicas just before the update. Clipping by the norm of the global
batch's gradient needs that sum earlier. On JAX (`keras.distribution`) and
torch the gradient an optimizer sees is already the global one, and these
functions do nothing.
"""

import keras


def _replica_context():
    """The tf.distribute replica context of a strategy with several replicas, or None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def num_replicas():
    """How many replicas share the current step (1 outside a TensorFlow
    strategy with several replicas, and on JAX and torch)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def sum_over_replicas(grads):
    """`(global_grads, spread)`: the gradient summed over replicas, and a
    function that turns a global gradient back into one replica's share
    (divided by the number of replicas), for an optimizer that sums the
    shares itself."""
    context = _replica_context()
    if context is None:
        return grads, lambda gs: gs
    import tensorflow as tf

    present = [g for g in grads if g is not None]
    reduced = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
    summed = [None if g is None else next(reduced) for g in grads]
    n = float(context.num_replicas_in_sync)
    return summed, lambda gs: [None if g is None else g / n for g in gs]


def assign(variables, values):
    """Assign `values` to `variables` (Keras variables), on every replica."""
    context = _replica_context()
    if context is None:
        for variable, value in zip(variables, values):
            variable.assign(value)
        return

    def merged(strategy, values):
        for variable, value in zip(variables, values):
            strategy.extended.update(variable.value, lambda v, x: v.assign(x),
                                     args=(value,), group=False)

    context.merge_call(merged, args=(list(values),))
