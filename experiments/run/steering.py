"""What acts on the measured noise while a run trains, wired into its plan and model: AdaScale's
learning-rate gain (``train.learning_rate_scaling = @adascale()``) and the adaptive batch
(``train.batch_size_schedule = @adaptive_batch_size()``).

Both read the train step's noise-scale averages, so both need an update split into two or more
independent pieces (k >= 2 micro-batches, or two or more replicas) wherever they act; a run where
nothing could measure the noise is refused before it starts, each error naming the binding. The
step then samples the noise scale on every update (k + 1 squared-norm passes per update), so
that the gain and the decisions read fresh averages.
"""

from absl import logging

from experiments.engine import adascale as adascale_lib
from experiments.engine import keras_internals


def reference_batch_size(settings, layout):
    """AdaScale's B_0: ``adascale.reference_batch_size``, else the micro-batch b (S = k)."""
    rule = settings.model.learning_rate_scaling
    if rule.reference_batch_size is not None:
        return rule.reference_batch_size
    return layout.micro_batch_size or layout.batch_size


def _batch_sizes(layout):
    """Every B an update of this run can have (for an adaptive batch: its smallest and B_max)."""
    if layout.adaptive:
        return (layout.batch_size, layout.batch_size_schedule.max_batch_size)
    if layout.update_sizes is not None and not layout.time_windows:
        return tuple(layout.update_sizes.size_of_stage)
    return (layout.batch_size,)


def _scales(settings, layout):
    """Whether AdaScale's S = B / B_0 can differ from 1 in this run."""
    if settings.model.learning_rate_scaling is None:
        return False
    if layout.adaptive:
        return True
    base = reference_batch_size(settings, layout)
    return any(size != base for size in _batch_sizes(layout))


def needs_noise(settings, layout):
    """Whether the run must measure the noise scale to train as bound."""
    return layout.adaptive or _scales(settings, layout)


def check_noise_available(settings, layout, num_replicas):
    """Refuses a run that acts on the noise where nothing can measure it (or with two horizons
    for the same averages)."""
    _horizon(settings, layout)
    if settings.measurements.track_gradient_noise is False:
        raise ValueError(
            "measurements.track_gradient_noise = False, but "
            + ("train.batch_size_schedule = @adaptive_batch_size()" if layout.adaptive
               else "train.learning_rate_scaling = @adascale()")
            + " follows the gradient noise scale the train step measures: remove that binding "
              "(or set it to True).")
    if layout.time_windows:
        raise ValueError("train.learning_rate_scaling = @adascale() cannot scale a stream "
                         "run's learning rate: the gradient noise scale is not measured on "
                         "stream data (consecutive windows are not independent samples).")
    if num_replicas >= 2:
        return
    micro = layout.micro_batch_size or layout.batch_size
    if layout.adaptive and layout.num_micro_batches < 2:
        raise ValueError(
            "train.batch_size_schedule = @adaptive_batch_size() needs the gradient noise scale "
            f"from the first update, but train.batch_size = {layout.batch_size} is one "
            f"micro-batch (k = 1) on one replica: nothing measures the noise, and the batch "
            f"would never change. Start at k >= 2 (train.batch_size = {2 * micro} or more with "
            f"train.micro_batch_size = {micro}), or train on two or more replicas.")
    if settings.model.learning_rate_scaling is not None and not layout.adaptive:
        base = reference_batch_size(settings, layout)
        for size in _batch_sizes(layout):
            if size != base and size // micro < 2:
                raise ValueError(
                    f"train.learning_rate_scaling = @adascale() at B = {size}, S = B / B_0 = "
                    f"{size / base:g} (adascale.reference_batch_size = {base}) needs the "
                    f"gradient noise scale, but B = {size} is one micro-batch on one replica: "
                    f"nothing measures it. Set train.micro_batch_size (k >= 2), train on two or "
                    f"more replicas, or bind adascale.reference_batch_size = {size} (S = 1).")


def _horizon(settings, layout):
    """The horizon the adaptive batch or AdaScale asks for (the adaptive batch's first), else
    None (the run's)."""
    rule = settings.model.learning_rate_scaling
    if layout.adaptive and layout.batch_size_schedule.horizon_examples is not None:
        if rule is not None and rule.horizon_examples is not None and \
                rule.horizon_examples != layout.batch_size_schedule.horizon_examples:
            raise ValueError(
                f"adaptive_batch_size.horizon_examples = "
                f"{layout.batch_size_schedule.horizon_examples:g} and adascale.horizon_examples "
                f"= {rule.horizon_examples:g} differ: both read the same averages; bind one.")
        return layout.batch_size_schedule.horizon_examples
    return None if rule is None else rule.horizon_examples


def attach(model, settings, layout, tracks_noise):
    """Makes the model's step sample the noise on every update where something acts on it,
    and AdaScale scale its optimizer's learning rate."""
    if needs_noise(settings, layout):
        model.measurements.sample_every_update = True
        horizon = _horizon(settings, layout)
        if horizon is not None:  # held whatever a measurement asks for
            model.measurements.horizon_override = horizon
            model.measurements.noise_horizon.assign(horizon)
    rule = settings.model.learning_rate_scaling
    if rule is None:
        return None
    if keras_internals.has_second_moments(model.optimizer):
        logging.warning(
            "AdaScale's gain is derived for SGD (with or without momentum); %s divides by "
            "its second moments, so the gain uses the plain (not preconditioned) noise "
            "estimates and is a heuristic there.", type(model.optimizer).__name__)
    scaling = adascale_lib.AdaScale(reference_batch_size(settings, layout),
                                    estimates=tracks_noise and _scales(settings, layout))
    return scaling.attach(model)
