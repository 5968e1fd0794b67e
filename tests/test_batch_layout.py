"""``BatchLayout``: built once from the bindings and the data; every rule named by its binding."""

import dataclasses

import numpy as np
import pytest

from experiments.inputs import layout as layout_lib
from experiments.inputs import pipelines as pipelines_lib
from experiments.inputs import stream_sources
from experiments.inputs.arrays import arrays
from experiments.inputs.streams import StreamLayout


def _rows(n=100):
    return arrays(x=np.zeros((n, 3), "float32"), y=np.arange(n) % 2, validation_split=0.0)


def test_rows_layout_has_every_quantity_once():
    layout = layout_lib.build(_rows(), batch_size=32, micro_batch_size=8, eval_batch_size=50)
    assert (layout.batch_size, layout.micro_batch_size, layout.num_micro_batches) == (32, 8, 4)
    assert layout.eval_batch_size == 50 and layout.examples_per_epoch == 100
    assert layout.updates_per_epoch == 4  # 32 + 32 + 32 + 4 (a ragged last batch)
    assert layout.split_size == 8 and not layout.time_windows
    assert layout.as_dict()["num_micro_batches"] == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.batch_size = 64


def test_defaults_and_k_equal_one():
    layout = layout_lib.build(_rows(), batch_size=20)
    assert (layout.micro_batch_size, layout.num_micro_batches, layout.eval_batch_size) == \
        (None, 1, 20)
    assert layout.split_size is None
    whole = layout_lib.build(_rows(), batch_size=20, micro_batch_size=20)
    assert whole.num_micro_batches == 1 and whole.split_size is None  # b = B: one pass


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "train.batch_size must be a positive integer, got 0"),
    ({"batch_size": 2.5}, "train.batch_size must be a positive integer"),
    ({"batch_size": True}, "train.batch_size must be a positive integer"),
    ({"batch_size": 30, "micro_batch_size": 8}, "train.batch_size=30 is not a multiple of "
                                                 "train.micro_batch_size=8"),
    ({"batch_size": 8, "micro_batch_size": 16}, "train.micro_batch_size=16 is larger"),
    ({"batch_size": 128, "micro_batch_size": 8}, "larger than the 100 training examples"),
    ({"batch_size": 128}, "has 100 examples, fewer than one batch of train.batch_size=128"),
    ({"batch_size": 10, "eval_batch_size": -1}, "train.eval_batch_size must be a positive"),
])
def test_each_error_names_its_binding(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layout_lib.build(_rows(), **kwargs)


def _stream(k=2):
    layout = StreamLayout(num_streams=4, window_length=5, num_micro_batches=k, max_offset=0)
    return stream_sources.stream_series(series=np.arange(400) % 7, validation_split=0.0,
                                        layout=layout)


def test_stream_layout_takes_s_t_k_from_the_stream():
    layout = layout_lib.build(_stream(k=2), batch_size=4)
    assert (layout.batch_size, layout.num_streams, layout.window_length) == (4, 4, 5)
    assert layout.num_micro_batches == 2 and layout.micro_batch_size is None
    assert layout.time_windows and layout.split_size == 5
    assert layout.updates_per_epoch == 399 // 4 // 10  # whole (S, k*T) batches only
    built, pipelines = pipelines_lib.batched(_stream(k=2), 4)
    assert built == layout and pipelines.steps_per_epoch == layout.updates_per_epoch
    x, _ = next(iter(pipelines.train))
    assert x.shape == (4, 10)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 8}, "train.batch_size=8 does not match stream_layout.num_streams=4"),
    ({"batch_size": 4, "micro_batch_size": 2}, "stream_layout.num_micro_batches"),
    ({"batch_size": 4, "eval_batch_size": 2}, "train.eval_batch_size=2 does not match"),
])
def test_stream_errors_name_their_bindings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        layout_lib.build(_stream(), **kwargs)


def test_rows_trained_counts_the_rows_of_the_updates_made():
    """What examples/s counts: 100 rows at B = 32 are updates of 32, 32, 32 and 4 rows; a
    prefix of updates (a run stopped early) and a difference of two counts (an epoch resumed
    mid-way) count the rows those updates trained, not whole epochs (a resumed epoch of 126
    updates at B = 1 was counted as its 1438 rows)."""
    layout = layout_lib.build(_rows(), batch_size=32)
    sizes = [32, 32, 32, 4] * 3
    for updates in range(len(sizes) + 1):
        assert layout.rows_trained(updates) == sum(sizes[:updates])
    assert layout.rows_trained(8) - layout.rows_trained(6) == 32 + 4  # the 2nd epoch's last two
    assert layout.rows_per_epoch == 100


def test_stream_rows_are_windows_so_k_does_not_change_the_count():
    """A stream example is one stream's window of T steps: S·k per update, so the same epoch
    counts the same rows at k = 1 and k = 4 (it counted S per update: examples/s fell by k for
    the same work), in the unit validation windows are counted in."""
    one, four = (layout_lib.build(_stream(k=k), batch_size=4) for k in (1, 4))
    assert one.rows_per_epoch == one.updates_per_epoch * 4 == 399 // 5 // 4 * 4
    assert four.rows_per_epoch == four.updates_per_epoch * 4 * 4 == 399 // 20 // 4 * 16
    assert four.rows_trained(3) == 3 * 16


def test_rows_trained_follows_a_schedules_stages():
    """Under a schedule each update has its stage's B (and each epoch's last the rows left)."""
    from experiments.inputs.batch_schedule import batch_size_schedule  # noqa: PLC0415

    layout = layout_lib.build(_rows(), 8, micro_batch_size=8,
                              schedule=batch_size_schedule([1], batch_sizes=[32]))
    sizes = [size for epoch in range(3) for size in layout.update_sizes.epoch(epoch)[1]]
    assert sizes[:13] == [8] * 12 + [4] and sizes[13:17] == [32, 32, 32, 4]
    for updates in (0, 5, 13, 14, 17, 20):
        assert layout.rows_trained(updates) == sum(sizes[:updates])
