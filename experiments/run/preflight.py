"""What a run checks of its model, loss and learning rate against its data before its run
directory exists (``runner.run`` calls them once the plan's model is built): a mistake found here
is one line of bad input, where at the first update it would be a long traceback in a failed run,
or no error at all and a wrong answer.
"""

import re

import numpy as np
from absl import logging

from experiments.engine import loss_terms
from experiments.models import schedules


# Keras' own cross-entropies, by the name their string, function and class share.
_SPARSE, _CATEGORICAL, _BINARY = ("sparse_categorical_crossentropy", "categorical_crossentropy",
                                  "binary_crossentropy")

# Most rows of each set the model and loss are run on before the run directory exists.
_PROBE_ROWS = 256


def loss_name(loss):
    """The name of a compiled loss (a string, a function or a ``keras.losses.Loss``)."""
    if isinstance(loss, str):
        return loss
    return str(getattr(loss, "name", None) or getattr(loss, "__name__", None)
               or type(loss).__name__)


def _keras_own(loss):
    """Whether ``loss`` is one of Keras' (a name, or a function or class of ``keras``): a
    user's loss may read targets of any shape."""
    return isinstance(loss, str) or (getattr(loss, "__module__", None)
                                     or type(loss).__module__).startswith("keras")


def _keras_cross_entropy(loss):
    """Which of Keras' own cross-entropies ``loss`` is (None for any other loss, a user's
    included, whatever its name)."""
    name = loss_name(loss)
    return name if name in (_SPARSE, _CATEGORICAL, _BINARY) and _keras_own(loss) else None


def _why_wrong(kind, task, y, width):
    """Why Keras' cross-entropy ``kind`` trains silently to a wrong answer on these targets and
    an output of ``width`` values, or None."""
    ids = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
    if kind == _SPARSE and task == "regression":
        return ("sparse cross-entropy casts regression targets to class ids (targets in [0, 1) "
                "all become class 0: loss 0); use a regression loss "
                "(keras.losses.MeanSquaredError)")
    if kind == _CATEGORICAL and width == 1:
        return ("categorical cross-entropy over one output is log(1) = 0 whatever the targets; "
                "use keras.losses.BinaryCrossentropy for 0/1 labels")
    if kind == _BINARY and task == "classification" and ids and width > 1:
        return (f"binary cross-entropy of class ids against {width} outputs broadcasts each id "
                "over the outputs; use keras.losses.SparseCategoricalCrossentropy, or the "
                "source's task = 'binary' for 0/1 labels")
    return None


def _squeezed(shape):
    shape = tuple(shape)
    return shape[:-1] if shape and shape[-1] == 1 else shape


def _cause(error):
    """The error's text on one line, without terminal colour codes (Keras wraps a layer's
    error: its cause is on a later line)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", getattr(error, "message", None) or str(error))
    return " ".join(text.split())[:600]


def check_loss_on_data(model, plan):
    """Refuses, before the run directory exists, a loss that does not fit the data: Keras'
    cross-entropies where they would train silently to a wrong answer (``_why_wrong``), class
    ids at or above the output's width, regression targets of another shape than the output
    under a Keras loss (which would broadcast them), and a model or loss that fails on the first rows of the
    training and validation sets (up to a micro-batch), which would fail at the first update
    with a long traceback."""
    data, loss = plan.data, plan.settings.model.loss
    if data.x_train is None or data.spec.batch_size is not None:
        return  # streams, and models built for a fixed batch
    name, kind = loss_name(loss), _keras_cross_entropy(loss)
    task = data.spec.task
    rows = min(_PROBE_ROWS, plan.layout.micro_batch_size or plan.layout.batch_size)
    terms = loss_terms.of_model(model)
    for part, x, y in (("training", data.x_train, data.y_train),
                       ("validation", data.x_validation, data.y_validation)):
        if x is None or not len(x):
            continue
        where = f"{data.name}'s {part} targets (task {task!r}, shape {tuple(y.shape[1:])})"
        try:
            # In the structure the model was built with (a list of its one input).
            y_pred = model([x[:rows]] if len(model.inputs) == 1 else x[:rows], training=False)
        except Exception as error:  # pylint: disable=broad-except  (named, one line)
            raise ValueError(f"The model cannot be called on {data.name}'s {part} examples "
                             f"(shape {tuple(x.shape[1:])}): {_cause(error)}") from error
        width = int(y_pred.shape[-1])
        why = None if kind is None else _why_wrong(kind, task, y, width)
        if why is not None:
            raise ValueError(f"train.loss is {name} on {where}: {why}.")
        if task == "classification" and kind == _SPARSE and y.ndim == 1 and len(y) \
                and int(np.max(y)) >= width:
            raise ValueError(f"{where}: class id {int(np.max(y))} is not below the model's "
                             f"{width} outputs (set the source's num_classes, or build the "
                             "model for every class).")
        if task == "regression" and _keras_own(loss) \
                and _squeezed(y.shape[1:]) != _squeezed(y_pred.shape[1:]):
            raise ValueError(f"{where}: the model's output has shape {tuple(y_pred.shape[1:])}; "
                             "the loss would broadcast targets and outputs against each other.")
        try:
            terms(y[:rows], y_pred)
        except Exception as error:  # pylint: disable=broad-except  (named, one line)
            raise ValueError(
                f"train.loss ({name}) cannot be computed on {where}, the model's output of "
                f"shape {tuple(y_pred.shape[1:])}: {_cause(error)}") from error


def check_learning_rate_sign(model):
    """The optimizer's learning rate at the first update: a negative or non-finite one (a sign
    slip in a binding) would climb the loss until it is NaN, after the run directory exists.
    0 stays allowed (a schedule may start there, a probe may freeze the weights)."""
    rate = float(np.asarray(model.optimizer.learning_rate))
    if not np.isfinite(rate) or rate < 0:
        raise ValueError(f"The optimizer's learning rate is {rate:.6g} at the first update; "
                         "it must be a positive number (check train.optimizer's learning_rate "
                         "binding or its schedule).")


def check_scaled_learning_rate(plan):
    """Refuses a learning rate that ``scaled_learning_rate`` computed for another B than the
    run's (bound apart from ``train.batch_size``: a study over B, or ``train.batch_size`` set
    alone, left every run at the base's rate), and warns when B changes during training, which a
    rate computed once does not follow."""
    evaluated = sorted(set(schedules.evaluated_batch_sizes()))
    if not evaluated:
        return
    batch_size = plan.layout.batch_size
    other = [b for b in evaluated if b != batch_size]
    if other:
        raise ValueError(
            f"scaled_learning_rate.batch_size = {other[0]}, but the run trains at B = "
            f"{batch_size}: its learning rate is the rule's for B = {other[0]}. Bind both "
            f"through one macro (BATCH = {batch_size}, train.batch_size = %BATCH, "
            "scaled_learning_rate.batch_size = %BATCH); a study over B sets it with "
            "study.batch_size_macro = 'BATCH'.")
    if plan.layout.batch_size_schedule is not None \
            and plan.settings.model.learning_rate_scaling is None:
        logging.warning(
            "The learning rate is scaled_learning_rate's for B = %d, computed once: it stays "
            "when train.batch_size_schedule changes B (AdaScale, train.learning_rate_scaling = "
            "@adascale(), follows B update by update).", batch_size)
