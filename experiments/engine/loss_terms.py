"""Split a Keras loss into a numerator and a denominator so that micro-batches add up exactly.

Keras reduces a loss per call: ``sum(w * l) / D`` where ``D`` is the element count, the number
of unmasked steps, or the sum of sample weights, depending on the reduction and the mask. Averaging
per-micro-batch losses is therefore *not* the full-batch loss whenever micro-batches differ in size,
weight or number of valid steps (the HF Trainer 2024 bug, Lightning #19987). Here every micro-batch
returns its weighted sum ``N_j`` and its share ``D_j`` of the denominator; the virtual batch's loss is
``sum_j N_j / sum_j D_j``, which is exactly what Keras computes on the whole batch at once.
"""

import keras
import tensorflow as tf

from experiments.engine import keras_internals


class LossTerms:
    """Reproduces the reduction of one compiled Keras loss as (numerator, denominator).

    Args:
      loss: what was passed to ``model.compile(loss=...)``: a ``keras.losses.Loss``, a loss
        function, or its name.
      weight: ``compile(loss_weights=...)``'s weight of the one output: the loss is
        ``weight * numerator / denominator``, as Keras multiplies it.
    """

    def __init__(self, loss, weight=1.0):
        if isinstance(loss, (list, tuple, dict)):
            raise ValueError(
                "Virtual batches support models with a single output and a single loss; "
                f"got loss={loss!r}."
            )
        if isinstance(loss, str):
            loss = keras.losses.get(loss)
        if isinstance(loss, keras.losses.Loss):
            self._values_fn = loss.call
            self.reduction = loss.reduction or "none"
            self._dtype = loss.dtype
        elif callable(loss):
            # Keras wraps a plain function so that y_true and y_pred are aligned first.
            self._values_fn = _aligned(loss)
            self.reduction = "sum_over_batch_size"
            self._dtype = None
        else:
            raise ValueError(f"Cannot use {loss!r} as a loss.")
        self.weight = float(weight)
        if self.reduction in ("none", None):
            raise ValueError(
                "A loss with reduction='none' has no scalar to differentiate; use the default "
                "'sum_over_batch_size', 'mean_with_sample_weight' or 'sum'."
            )

    @property
    def sums_only(self):
        """True for reduction='sum': the loss is the plain sum and its denominator is 1."""
        return self.reduction == "sum"

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Returns (numerator, denominator) of this micro-batch, both scalars of the loss dtype."""
        dtype = self._dtype or keras.backend.floatx()
        in_mask = keras_internals.keras_mask(y_pred)
        y_pred = tf.cast(y_pred, dtype)
        y_true = tf.convert_to_tensor(y_true)
        if y_true.dtype.is_floating:
            y_true = tf.cast(y_true, dtype)
        values = self._values_fn(y_true, y_pred)
        out_mask = keras_internals.keras_mask(values)  # before the weight: a product has none
        if self.weight != 1.0:
            values = values * tf.cast(self.weight, values.dtype)
        mask = _combine_masks(in_mask, out_mask)
        values = tf.cast(values, dtype)

        if values.shape.rank == 0 and self.reduction != "sum":
            return self._scalar_terms(values, y_pred, mask, sample_weight, dtype)
        weight = None
        if mask is not None:
            weight = _match_rank(tf.cast(mask, dtype), values)
        if sample_weight is not None:
            sample_weight = _match_rank(tf.cast(sample_weight, dtype), values)
            weight = sample_weight if weight is None else weight * sample_weight

        numerator = tf.reduce_sum(values if weight is None else values * weight)
        if self.reduction == "sum":
            denominator = tf.zeros((), dtype)
        elif self.reduction == "mean_with_sample_weight" and weight is not None:
            # Keras divides by the weights' own sum when there is no mask (a per-row weight of
            # shape (n, 1) on a per-step loss counts once per row, not once per step), and by
            # the sum of mask x weight over every element when there is one.
            denominator = tf.reduce_sum(sample_weight) if mask is None else \
                tf.reduce_sum(tf.broadcast_to(weight, tf.shape(values)))
        elif mask is not None:
            denominator = tf.reduce_sum(
                tf.broadcast_to(_match_rank(tf.cast(mask, dtype), values), tf.shape(values))
            )
        else:
            denominator = tf.cast(tf.size(values), dtype)
        return numerator, denominator

    @staticmethod
    def _scalar_terms(value, y_pred, mask, sample_weight, dtype):
        """A loss that returns a scalar (its own mean over the rows; Keras leaves it as it is):
        weighted by the micro-batch's rows, so that a ragged batch's micro-batches add up to
        the whole batch's mean. Sample weights and masks cannot be split exactly here."""
        if mask is not None or sample_weight is not None:
            raise ValueError(
                "The loss returns a scalar, so virtual batches cannot split its sample weights "
                "or mask exactly: return one value per row (or per step) instead.")
        rows = tf.cast(tf.shape(y_pred)[0], dtype)
        return value * rows, rows


def of_model(model):
    """The ``LossTerms`` of ``model``'s compiled loss, with its loss weight (a
    ``VirtualBatchModel``'s ``loss_weight``; for another model, the weight Keras resolved once
    its compiled loss is built)."""
    weight = getattr(model, "loss_weight", None)
    if weight is None:
        weight = keras_internals.compiled_loss_weight(model)
    return LossTerms(model.loss, weight=1.0 if weight is None else weight)


def _aligned(function):
    def aligned(y_true, y_pred):
        return function(*keras_internals.same_rank(y_true, y_pred))
    return aligned


def _combine_masks(in_mask, out_mask):
    if in_mask is not None and out_mask is not None:
        return tf.logical_and(tf.cast(in_mask, tf.bool), tf.cast(out_mask, tf.bool))
    return in_mask if in_mask is not None else out_mask


def _match_rank(weight, values):
    """Squeeze a trailing 1 or add trailing axes so that ``weight`` broadcasts against ``values``."""
    weight_rank, values_rank = weight.shape.rank, values.shape.rank
    if weight_rank == values_rank + 1 and weight.shape[-1] == 1:
        return tf.squeeze(weight, axis=-1)
    while weight_rank < values_rank:
        weight = tf.expand_dims(weight, axis=-1)
        weight_rank += 1
    return weight
