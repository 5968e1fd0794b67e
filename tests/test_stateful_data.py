"""The stream layout: row i of batch k+1 continues row i of batch k, for every row and batch.

Positions are used as the series values (``arange``), so every element says where it came from.
"""

import numpy as np
import pytest

from experiments.inputs import pipelines as pipelines_lib
from experiments.inputs import stream_sources as stateful_data
from experiments.inputs.streams import StreamLayout


def _passes(data, num_passes, seed=0):
    """Training batches of ``num_passes`` passes (epochs): a list of (x, y) arrays per pass."""
    pipelines = pipelines_lib.batched(data, data.stream.layout.num_streams, seed=seed)[1]
    out = []
    for epoch in range(num_passes):
        batches = [(x.numpy(), y.numpy()) for x, y in pipelines.train_from(epoch, 0, 1)]
        out.append((np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])))
    return pipelines, out


def _position_data(n, layout, validation_split=0.0):
    return stateful_data.stream_series(series=np.arange(n), validation_split=validation_split,
                                       layout=layout)


@pytest.mark.parametrize("num_micro_batches", [1, 3])
def test_every_row_continues_across_every_batch_of_every_epoch(num_micro_batches):
    layout = StreamLayout(num_streams=5, window_length=7, num_micro_batches=num_micro_batches,
                          max_offset=9)
    n = 1001
    data = _position_data(n, layout)
    pipelines, passes = _passes(data, num_passes=4, seed=3)
    length = (n - 1 - 9) // 5 // (7 * num_micro_batches) * (7 * num_micro_batches)
    assert pipelines.steps_per_epoch == length // (7 * num_micro_batches)
    built = pipelines_lib.batched(data, 5)[0]
    assert built.window_length == 7 and built.num_micro_batches == num_micro_batches
    offsets = []
    for x, y in passes:
        # Never a short batch: every batch is (S, k*T).
        assert x.shape == (pipelines.steps_per_epoch, 5, 7 * num_micro_batches)
        np.testing.assert_array_equal(y, x + 1)  # next-step targets
        # Within a row the steps are consecutive...
        np.testing.assert_array_equal(np.diff(x, axis=2), 1)
        # ...and row i of batch k+1 starts right where row i of batch k ended, for every row.
        np.testing.assert_array_equal(x[1:, :, 0], x[:-1, :, -1] + 1)
        # Streams are disjoint contiguous stretches of L steps, after the epoch's offset.
        offset = x[0, 0, 0]
        np.testing.assert_array_equal(x[0, :, 0], offset + length * np.arange(5))
        assert 0 <= offset <= 9
        assert x.max() < n - 1
        offsets.append(int(offset))
    assert len(set(offsets)) > 1, "the per-epoch offset should vary between epochs"
    # Seeded: the same seed gives the same offsets, another seed other offsets.
    again = [int(x[0, 0, 0]) for x, _ in _passes(data, 4, seed=3)[1]]
    other = [int(x[0, 0, 0]) for x, _ in _passes(data, 4, seed=4)[1]]
    assert again == offsets
    assert other != offsets


def test_without_offset_every_epoch_is_identical_and_validation_is_the_held_out_tail():
    layout = StreamLayout(num_streams=3, window_length=4, max_offset=0)
    data = _position_data(301, layout, validation_split=0.2)
    pipelines, passes = _passes(data, 2)
    np.testing.assert_array_equal(passes[0][0], passes[1][0])
    assert passes[0][0][0, 0, 0] == 0
    val = np.stack([x.numpy() for x, _ in pipelines.validation])
    assert val.shape[1:] == (3, 4)
    assert len(val) == pipelines.validation_steps
    np.testing.assert_array_equal(val[1:, :, 0], val[:-1, :, -1] + 1)
    # Held-out steps come after every training step: never trained on.
    assert val.min() > passes[0][0].max()
    assert val.min() == 300 - 60


def test_text_documents_are_joined_with_a_separator(tmp_path):
    (tmp_path / "a.txt").write_text("abcab")
    (tmp_path / "b.txt").write_text("cba")
    layout = StreamLayout(num_streams=2, window_length=3, max_offset=0)
    data = stateful_data.stream_text(paths=[str(tmp_path)], validation_split=0.0, layout=layout)
    vocab = data.vocabulary
    assert stateful_data.DOCUMENT_SEPARATOR in vocab
    assert data.spec.vocabulary_size == data.spec.num_outputs == len(vocab) == 4
    assert data.spec.batch_size == 2 and data.spec.task == "language_model"
    text = "".join(vocab[i] for i in data.stream.train_inputs) \
        + vocab[data.stream.train_targets[-1]]
    assert text == "abcab" + stateful_data.DOCUMENT_SEPARATOR + "cba"
    x, y = next(iter(pipelines_lib.batched(data, 2)[1].train))
    decoded = ["".join(vocab[i] for i in row) for row in x.numpy()]
    assert decoded == ["abc", "ab" + stateful_data.DOCUMENT_SEPARATOR]


def test_token_documents_get_a_new_separator_id():
    layout = StreamLayout(num_streams=1, window_length=2, max_offset=0)
    data = stateful_data.stream_tokens(documents=[[1, 2, 3], [4, 5]], validation_split=0.0,
                                       layout=layout)
    np.testing.assert_array_equal(data.stream.train_inputs, [1, 2, 3, 6, 4])
    np.testing.assert_array_equal(data.stream.train_targets, [2, 3, 6, 4, 5])
    assert data.spec.vocabulary_size == 7


def test_series_from_csv_column_with_a_target_column(tmp_path):
    rows = ["t,value,label"] + [f"{i},{i * 0.5},{i % 3}" for i in range(40)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    layout = StreamLayout(num_streams=2, window_length=4, max_offset=0)
    data = stateful_data.stream_series(path=str(tmp_path / "s.csv"), column="value",
                                       target_column="label", validation_split=0.0,
                                       layout=layout)
    assert data.spec.task == "regression" and data.spec.input_shape == (None, 1)
    targets = np.asarray(data.stream.train_targets)
    np.testing.assert_array_equal(targets[:, 0], [i % 3 for i in range(40)])


def test_flip_flop_target_is_the_last_marker():
    layout = StreamLayout(num_streams=2, window_length=4)
    data = stateful_data.flip_flop(num_steps=2000, marker_probability=0.05,
                                   validation_split=0.0, layout=layout)
    x, y = data.stream.train_inputs, data.stream.train_targets
    last = None
    for symbol, target in zip(x, y):
        if symbol < 2:
            last = symbol
        assert target == last


# ---- clear errors ------------------------------------------------------------------------------

def test_too_short_for_one_batch():
    with pytest.raises(ValueError, match=r"too few for one batch.*stream_layout.num_streams=8"):
        _position_data(80, StreamLayout(num_streams=8, window_length=10))


def test_held_out_part_too_short():
    with pytest.raises(ValueError, match="held-out series.*validation_split"):
        _position_data(400, StreamLayout(num_streams=8, window_length=10), validation_split=0.05)


def test_batch_size_must_be_the_number_of_streams():
    data = _position_data(500, StreamLayout(num_streams=4, window_length=5))
    with pytest.raises(ValueError, match=r"train.batch_size=8 does not match "
                                         r"stream_layout.num_streams=4"):
        pipelines_lib.batched(data, 8)
    with pytest.raises(ValueError, match=r"train.eval_batch_size=2"):
        pipelines_lib.batched(data, 4, eval_batch_size=2)


def test_bad_layout_values_name_the_binding():
    with pytest.raises(ValueError, match="stream_layout.window_length"):
        StreamLayout(num_streams=4, window_length=0)
    with pytest.raises(ValueError, match="stream_layout.max_offset"):
        StreamLayout(num_streams=4, window_length=3, max_offset=-1)


def test_stream_sources_refuse_ids_and_values_a_run_would_fail_on_later():
    """Checked when the data is loaded (before a run directory exists), not in an embedding
    lookup mid-training."""
    layout = StreamLayout(num_streams=2, window_length=4)
    ids = np.arange(200) % 10
    with pytest.raises(ValueError, match=r"id 9 at step 9 is outside \[0, 5\) "
                                         r"\(stream_series.vocabulary_size=5\)"):
        stateful_data.stream_series(series=ids, vocabulary_size=5, layout=layout)
    with pytest.raises(ValueError, match=r"id -1 at step 3 is outside"):
        stateful_data.stream_series(series=np.where(ids == 3, -1, ids), layout=layout)
    with pytest.raises(ValueError, match="class targets must be ids >= 0; found -2 at step 7"):
        stateful_data.stream_series(series=np.zeros(200, np.float32),
                                    targets=np.where(np.arange(200) == 7, -2, 1), layout=layout)
    series = np.sin(np.arange(200.0))
    series[11] = np.nan
    with pytest.raises(ValueError, match=r"'series': the series: NaN at index \(11"):
        stateful_data.stream_series(series=series, layout=layout)
    with pytest.raises(ValueError, match="id -4 at step 0 is outside"):
        stateful_data.stream_tokens(documents=[[-4, 1, 2] * 40], layout=layout)
    with pytest.raises(ValueError, match="no documents, or only empty ones"):
        stateful_data.stream_tokens(documents=[[], []], layout=layout)
    huge = np.where(ids == 4, 2 ** 31 + 1, ids).astype(np.int64)  # would wrap in int32
    with pytest.raises(ValueError, match=rf"id {2 ** 31 + 1} at step 4 is outside \[0, 10\)"):
        stateful_data.stream_series(series=huge, vocabulary_size=10, layout=layout)
    with pytest.raises(ValueError, match="stream_tokens.separator_id must be an id >= 0"):
        stateful_data.stream_tokens(documents=[[1, 2] * 60, [3] * 60], separator_id=-1,
                                    layout=layout)
    with pytest.raises(FileNotFoundError,
                       match=r"Text file or directory \(stream_text.paths\) not found"):
        stateful_data.stream_text(paths=["no/such/texts"], layout=layout)
    data = stateful_data.stream_series(series=ids, layout=layout)  # in range: accepted
    assert data.spec.vocabulary_size == 10


def test_whole_valued_csv_targets_are_classes_when_told_and_warned_of_otherwise(tmp_path, caplog):
    """A CSV column is read as floats, so labels 0/1/2 from a CSV became regression values
    while the same labels from an npz file were classes."""
    rows = ["t,value,label"] + [f"{i},{i * 0.5},{i % 3}" for i in range(40)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    layout = StreamLayout(num_streams=2, window_length=4, max_offset=0)
    data = stateful_data.stream_series(path=str(tmp_path / "s.csv"), column="value",
                                       target_column="label", validation_split=0.0,
                                       layout=layout, target_task="classification")
    assert data.spec.task == "classification" and data.spec.num_outputs == 3
    with caplog.at_level("WARNING"):
        stateful_data.stream_series(path=str(tmp_path / "s.csv"), column="value",
                                    target_column="label", validation_split=0.0, layout=layout)
    assert "stream_series.target_task = 'classification'" in caplog.text
