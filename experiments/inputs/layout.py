"""The batch layout of a run, decided once: B, b, k, T, S, the eval batch and updates per epoch.

One name per quantity, everywhere (code, gin, logs, ``result.json``, docs):

- ``batch_size`` (B): rows of one update, the virtual batch (``train.batch_size``). For stream
  data, the S streams.
- ``micro_batch_size`` (b): rows that go through the model at once (``train.micro_batch_size``);
  None when the update is not split by rows.
- ``num_micro_batches`` (k): micro-batches per update; B = k·b for rows. For stream data a
  micro-batch is one window of T steps of all S streams (``stream_layout.num_micro_batches``).
- ``window_length`` (T) and ``num_streams`` (S): stream data only.
- ``eval_batch_size``: rows per evaluation batch (``train.eval_batch_size``; default B).
- ``updates_per_epoch``: optimizer updates (= training batches) per epoch.

``build`` checks every rule once, before a run directory exists, and each error names its binding.
The train step derives k from the rows of the batch it receives (k = ceil(rows / b)), so a layout
whose B grows during training (``train.batch_size_schedule``, ``batch_schedule``) needs no other
change to the step: each update stays exact for its own B. Such a layout's ``batch_size`` and
``num_micro_batches`` are those of the first stage; ``update_sizes`` gives every update's size.
"""

import dataclasses
from typing import Optional

from experiments.common import checks
from experiments.inputs.adaptive_batch import AdaptiveBatchSize, AdaptiveUpdateSizes
from experiments.inputs.batch_schedule import BatchSizeSchedule, UpdateSizes


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How the examples of a run are batched; see the module docstring for the names."""

    batch_size: int
    micro_batch_size: Optional[int]
    num_micro_batches: int
    eval_batch_size: int
    updates_per_epoch: int
    examples_per_epoch: Optional[int] = None
    window_length: Optional[int] = None
    num_streams: Optional[int] = None
    batch_size_schedule: Optional[BatchSizeSchedule] = None  # or an AdaptiveBatchSize
    update_sizes: Optional[UpdateSizes] = dataclasses.field(default=None, compare=False,
                                                            repr=False)

    @property
    def time_windows(self):
        """True for stream data: an update's micro-batches are consecutive time windows."""
        return self.window_length is not None

    @property
    def split_size(self):
        """What the train step cuts a batch into: b rows, or T steps for streams; None if k = 1
        by rows (streams are always cut into windows)."""
        if self.time_windows:
            return self.window_length
        if self.batch_size_schedule is not None:  # later stages have k > 1: b from the start
            return self.micro_batch_size
        return self.micro_batch_size if self.num_micro_batches > 1 else None

    @property
    def adaptive(self):
        """True when B is decided during training (``adaptive_batch.AdaptiveBatchSize``)."""
        return isinstance(self.batch_size_schedule, AdaptiveBatchSize)

    @property
    def largest_num_micro_batches(self):
        """The largest k of any update (that of the last stage when a schedule grows B)."""
        if self.update_sizes is None:
            return self.num_micro_batches
        unit = 1 if self.time_windows else self.micro_batch_size
        return self.update_sizes.largest_size // unit

    def updates_in(self, epoch):
        """Updates (training batches) in ``epoch``: the same every epoch unless scheduled."""
        if self.update_sizes is None:
            return self.updates_per_epoch
        return self.update_sizes.updates_in(epoch)

    @property
    def rows_per_epoch(self):
        """Input rows one epoch trains on: its examples for arrays; for streams its windows of T
        steps, S per micro-batch (S·k per update), the unit the validation windows are counted
        in. A schedule's first epoch for scheduled streams."""
        if self.examples_per_epoch is not None:
            return self.examples_per_epoch
        return self.rows_trained(self.updates_in(0))

    def rows_trained(self, updates):
        """Input rows (as ``rows_per_epoch`` counts them) of the run's first ``updates`` updates:
        what examples per second counts, exact for a ragged last batch, a schedule's stages and
        an epoch resumed mid-way or cut short (the rows of updates u0..u1 are
        ``rows_trained(u1) - rows_trained(u0)``)."""
        if self.update_sizes is not None:  # sizes in rows, or in windows of S streams
            unit = self.num_streams if self.time_windows else 1
            rows, epoch = 0, 0
            while updates > 0:
                sizes = self.update_sizes.epoch(epoch)[1]
                if not sizes:  # an epoch holds no update: nothing more is trained
                    break
                rows += sum(sizes[:updates]) * unit
                updates, epoch = updates - len(sizes), epoch + 1
            return rows
        per_update = (self.num_streams * self.num_micro_batches if self.time_windows
                      else self.batch_size)
        epochs, part = divmod(int(updates), self.updates_per_epoch)
        per_epoch = (self.examples_per_epoch if self.examples_per_epoch is not None
                     else self.updates_per_epoch * per_update)
        return epochs * per_epoch + part * per_update  # a ragged batch is an epoch's last

    def stages(self, epochs):
        """Each stage of a batch-size schedule over ``epochs`` epochs: where it starts (epoch,
        update) and its B and k; one stage without a schedule."""
        if self.update_sizes is None:
            return [{"stage": 0, "epoch": 0, "update": 0, "batch_size": self.batch_size,
                     "num_micro_batches": self.num_micro_batches}]
        stages = []
        for start in self.update_sizes.stages(epochs):
            size = start.pop("size")
            if self.time_windows:  # a stage's size is its windows per update
                start.update(batch_size=self.batch_size, num_micro_batches=size)
            else:
                start.update(batch_size=size, num_micro_batches=size // self.micro_batch_size)
            stages.append(start)
        return stages

    def as_dict(self):
        """The layout as ``result.json`` records it (the schedule as its bindings)."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                  if field.name != "update_sizes"}
        if self.batch_size_schedule is not None:
            fields["batch_size_schedule"] = dataclasses.asdict(self.batch_size_schedule)
            # the first stage's count would match no epoch once B changes: the stages say it
            # (``batch_size_stages``), the run's ``updates`` the total
            fields["updates_per_epoch"] = None
        return fields


def check_virtual_batch(batch_size, micro_batch_size, num_examples=None):
    """(B, b or None, k) from ``train.batch_size`` and ``train.micro_batch_size``; checks the data
    size when known. b = B is not split (k = 1); b > B is refused (b must divide B)."""
    batch_size = checks.positive_int(batch_size, "train.batch_size")
    if micro_batch_size is None:
        return batch_size, None, 1
    micro = checks.positive_int(micro_batch_size, "train.micro_batch_size")
    if micro > batch_size:
        raise ValueError(
            f"train.micro_batch_size={micro} is larger than the virtual batch "
            f"train.batch_size={batch_size}; the micro-batch must divide the virtual batch.")
    if batch_size % micro:
        raise ValueError(
            f"train.batch_size={batch_size} is not a multiple of train.micro_batch_size={micro}: "
            f"a virtual batch is k whole micro-batches (e.g. {micro * max(batch_size // micro, 1)}"
            f" or {micro * (batch_size // micro + 1)}).")
    _check_data_size(batch_size, num_examples)
    return batch_size, micro, batch_size // micro


def _check_data_size(batch_size, num_examples):
    if num_examples is not None and batch_size > num_examples:
        raise ValueError(
            f"train.batch_size={batch_size} is larger than the {num_examples} training examples.")


def build(data, batch_size, micro_batch_size=None, eval_batch_size=None, schedule=None):
    """The ``BatchLayout`` of ``data`` (a ``dataset.Data``) for these bindings, fully checked;
    ``schedule``: a ``batch_schedule.BatchSizeSchedule`` (``train.batch_size_schedule``)."""
    check_data(data)
    if data.stream is not None:
        if isinstance(schedule, AdaptiveBatchSize):
            raise ValueError(
                "train.batch_size_schedule = @adaptive_batch_size() cannot train on stream data: "
                "it follows the gradient noise scale, which is not measured there (the windows "
                "of an update are consecutive steps of the same streams, not independent "
                "samples). Use @batch_size_schedule() to grow k at chosen epochs.")
        layout = _stream_layout(data, batch_size, micro_batch_size, eval_batch_size)
        return layout if schedule is None else _scheduled_streams(layout, data, schedule)
    layout = _array_layout(data, batch_size, micro_batch_size, eval_batch_size)
    if isinstance(schedule, AdaptiveBatchSize):
        return _adaptive_arrays(layout, data, schedule)
    return layout if schedule is None else _scheduled_arrays(layout, data, schedule)


def check_data(data):
    """A clear error when ``train.data_fn`` returned something other than a ``dataset.Data``
    (a ``tf.data.Dataset`` most often: it goes through the ``tf_data`` source)."""
    if hasattr(data, "stream") and hasattr(data, "spec"):
        return
    kind = type(data).__name__
    if "Dataset" in kind or (isinstance(data, (tuple, list)) and data
                             and all("Dataset" in type(d).__name__ for d in data)):
        raise ValueError(
            f"train.data_fn returned a tf.data dataset ({kind}), not batchlab's Data: hand the "
            "function to the tf_data source instead, `train.data_fn = @tf_data` and "
            "`tf_data.dataset_fn = @<your function>` (it returns (train, validation) datasets "
            "of examples; docs/data.md).")
    raise ValueError(f"train.data_fn returned a {kind}, not batchlab's Data "
                     "(experiments.inputs.dataset.Data; sources and the contract: docs/data.md).")


def _array_layout(data, batch_size, micro_batch_size, eval_batch_size):
    batch_size, micro, k = check_virtual_batch(batch_size, micro_batch_size, data.num_train)
    if data.num_train < batch_size:
        raise ValueError(
            f"The training set of '{data.name}' has {data.num_train} examples, fewer than one "
            f"batch of train.batch_size={batch_size}.")
    eval_batch_size = checks.positive_int(eval_batch_size or batch_size, "train.eval_batch_size")
    return BatchLayout(batch_size=batch_size, micro_batch_size=micro, num_micro_batches=k,
                       eval_batch_size=eval_batch_size,
                       updates_per_epoch=-(-data.num_train // batch_size),
                       examples_per_epoch=data.num_train)


def _stream_layout(data, batch_size, micro_batch_size, eval_batch_size):
    """Stream data: B is the S streams, k windows of T steps make one update."""
    stream = data.stream
    lay = stream.layout
    if micro_batch_size is not None:
        raise ValueError(
            f"train.micro_batch_size={micro_batch_size} cannot split a stream batch: its rows are "
            f"the {lay.num_streams} streams a stateful model needs together. Split an "
            "update into consecutive windows instead with stream_layout.num_micro_batches "
            "(truncated BPTT with one update every k windows).")
    batch_size = checks.positive_int(batch_size, "train.batch_size")
    if batch_size != lay.num_streams:
        raise ValueError(
            f"train.batch_size={batch_size} does not match stream_layout.num_streams="
            f"{lay.num_streams}: a stream pipeline's batch is its {lay.num_streams} streams "
            "(the stateful model's fixed batch size). Bind both to the same value.")
    if eval_batch_size is not None:
        checks.positive_int(eval_batch_size, "train.eval_batch_size")
        if eval_batch_size != lay.num_streams:
            raise ValueError(
                f"train.eval_batch_size={eval_batch_size} does not match stream_layout.num_streams"
                f"={lay.num_streams}: evaluation runs on the same fixed number of streams.")
    return BatchLayout(batch_size=lay.num_streams, micro_batch_size=None,
                       num_micro_batches=lay.num_micro_batches, eval_batch_size=lay.num_streams,
                       updates_per_epoch=stream.steps_per_epoch, examples_per_epoch=None,
                       window_length=lay.window_length, num_streams=lay.num_streams)


def _check_schedule(schedule):
    if not isinstance(schedule, BatchSizeSchedule):
        raise ValueError(f"train.batch_size_schedule must be @batch_size_schedule() or "
                         f"@adaptive_batch_size(), got "
                         f"{schedule!r}.")


def _scheduled_arrays(layout, data, schedule):
    """Array data: each stage's B must be whole micro-batches of b and fit in the data."""
    _check_schedule(schedule)
    micro = layout.micro_batch_size or layout.batch_size
    sizes = schedule.stage_sizes(layout.batch_size)
    for stage, size in enumerate(sizes[1:], 1):
        where = f"{schedule.stage_name(stage)} has B={size}"
        if size <= sizes[stage - 1]:
            raise ValueError(f"{where}, not larger than the stage before it (B={sizes[stage - 1]})"
                             ": a batch-size schedule grows the batch (as a learning rate would "
                             "decay); give " + ("increasing batch_size_schedule.batch_sizes."
                                                if schedule.factors is None else
                                                "batch_size_schedule.factor > 1."))
        if size % micro:
            raise ValueError(f"{where}, not a multiple of the micro-batch b={micro} "
                             "(train.micro_batch_size, or train.batch_size when unset): a "
                             "schedule changes k, the micro-batches of an update, not b.")
        if size > data.num_train:
            raise ValueError(f"{where}, larger than the {data.num_train} training examples of "
                             f"'{data.name}'.")
    return dataclasses.replace(
        layout, micro_batch_size=micro, batch_size_schedule=schedule,
        update_sizes=UpdateSizes(schedule, sizes, data.num_train, ragged=True))


def _adaptive_arrays(layout, data, settings):
    """Array data with an adaptive B: B_max whole micro-batches that fit in the data, and B
    starting at or below it."""
    micro = layout.micro_batch_size or layout.batch_size
    largest = settings.max_batch_size
    if largest < layout.batch_size:
        raise ValueError(f"adaptive_batch_size.max_batch_size={largest} is smaller than the "
                         f"starting batch train.batch_size={layout.batch_size}.")
    if largest % micro:
        raise ValueError(
            f"adaptive_batch_size.max_batch_size={largest} is not a multiple of the micro-batch "
            f"b={micro} (train.micro_batch_size, or train.batch_size when unset): the batch "
            f"changes k, the micro-batches of an update, not b (e.g. {micro * (largest // micro)}"
            f" or {micro * (largest // micro + 1)}).")
    if largest > data.num_train:
        raise ValueError(f"adaptive_batch_size.max_batch_size={largest} is larger than the "
                         f"{data.num_train} training examples of '{data.name}'.")
    return dataclasses.replace(
        layout, micro_batch_size=micro, batch_size_schedule=settings,
        update_sizes=AdaptiveUpdateSizes(settings, layout.batch_size, micro, data.num_train))


def _scheduled_streams(layout, data, schedule):
    """Stream data: the S streams stay; a stage multiplies k, the T-step windows of an update."""
    _check_schedule(schedule)
    if schedule.batch_sizes is not None:
        raise ValueError(
            "batch_size_schedule.batch_sizes cannot grow a stream batch: its rows are the "
            f"{layout.num_streams} streams of the stateful model. Use batch_size_schedule.factor "
            "(k, the windows of one update, is multiplied).")
    lay = data.stream.layout
    windows = (len(data.stream.train_inputs) - lay.offset_range) // lay.num_streams \
        // lay.window_length
    sizes = schedule.stage_sizes(layout.num_micro_batches)
    for stage, size in enumerate(sizes[1:], 1):
        if size > windows:
            raise ValueError(
                f"{schedule.stage_name(stage)} has k={size} windows of "
                f"{lay.window_length} steps per update, more than the {windows} windows each "
                f"of the {lay.num_streams} streams holds in '{data.name}'.")
    return dataclasses.replace(layout, batch_size_schedule=schedule,
                               update_sizes=UpdateSizes(schedule, sizes, windows, ragged=False))
