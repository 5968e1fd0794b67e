"""The strict file readers: every bad file is refused with the file, line and column named."""

import numpy as np
import pytest

from experiments.inputs import files
from experiments.inputs.files import InputFileError


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


GOOD = "a,b,label\n1,2,0\n3.5,-4e1,1\n 5 ,6,0\n\n\n"


# ----------------------------------------------------------------------------------------------
# CSV: good files


def test_good_csv_values_and_column_order(tmp_path):
    header, values = files.read_csv_table(write(tmp_path, GOOD))
    assert header == ["a", "b", "label"]
    assert values.dtype == np.float64 and values.shape == (3, 3)  # trailing blank lines ignored
    np.testing.assert_array_equal(values, [[1, 2, 0], [3.5, -40, 1], [5, 6, 0]])


def test_subset_of_columns_in_requested_order(tmp_path):
    header, values = files.read_csv_table(write(tmp_path, GOOD), columns=["label", "a"])
    assert header == ["a", "b", "label"]
    np.testing.assert_array_equal(values, [[0, 1], [1, 3.5], [0, 5]])


def test_read_csv_columns_defaults_to_all_but_label(tmp_path):
    x, y = files.read_csv_columns(write(tmp_path, GOOD), "label")
    assert x.dtype == np.float32 and x.shape == (3, 2)
    assert y.dtype == np.float64 and y.shape == (3,)
    np.testing.assert_array_equal(x, [[1, 2], [3.5, -40], [5, 6]])
    np.testing.assert_array_equal(y, [0, 1, 0])
    x, _ = files.read_csv_columns(write(tmp_path, GOOD), "label", feature_columns=["b"])
    np.testing.assert_array_equal(x, [[2], [-40], [6]])


def test_read_csv_column(tmp_path):
    column = files.read_csv_column(write(tmp_path, GOOD), "b")
    assert column.shape == (3,) and column.dtype == np.float64
    np.testing.assert_array_equal(column, [2, -40, 6])


def test_text_allowed_in_a_column_not_requested(tmp_path):
    path = write(tmp_path, "name,value\nalpha,1\nbeta,2\n")
    np.testing.assert_array_equal(files.read_csv_column(path, "value"), [1, 2])
    with pytest.raises(InputFileError, match=r"line 2, column 'name' \(#1\): 'alpha'"):
        files.read_csv_table(path)


def test_byte_order_mark_does_not_stick_to_first_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffa,b\n1,2\n".encode("utf-8"))
    assert files.read_csv_table(str(path))[0] == ["a", "b"]


# ----------------------------------------------------------------------------------------------
# CSV: bad rows and cells


def test_short_row_names_file_and_line(tmp_path):
    path = write(tmp_path, "a,b,c,d\n1,2,3,4\n1,2,3\n")
    with pytest.raises(InputFileError, match=r"data\.csv, line 3: 3 cells, the header has 4 "
                                             r"columns"):
        files.read_csv_table(path)


def test_long_row_names_file_and_line_even_outside_requested_columns(tmp_path):
    path = write(tmp_path, "a,b\n1,2\n3,4\n5,6,7\n")
    with pytest.raises(InputFileError, match=r"data\.csv, line 4: 3 cells, the header has 2"):
        files.read_csv_column(path, "a")


def test_blank_line_between_rows_is_refused(tmp_path):
    path = write(tmp_path, "a,b\n1,2\n\n3,4\n")
    with pytest.raises(InputFileError, match=r"line 3: blank line"):
        files.read_csv_table(path)


def test_empty_cell_names_line_and_column(tmp_path):
    path = write(tmp_path, "a,b,c\n1,2,3\n4,,6\n")
    with pytest.raises(InputFileError,
                       match=r"data\.csv, line 3, column 'b' \(#2\): empty cell"):
        files.read_csv_table(path)


def test_non_numeric_cell_names_line_column_and_text(tmp_path):
    path = write(tmp_path, "a,b,c\n1,2,3\n4,5,6\n7,8,x9\n")
    with pytest.raises(InputFileError,
                       match=r"data\.csv, line 4, column 'c' \(#3\): 'x9' is not a number"):
        files.read_csv_columns(path, "c")


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "INF", "Infinity", "+nan"])
def test_non_finite_cells_are_refused(tmp_path, text):
    path = write(tmp_path, f"a,b\n1,2\n3,{text}\n")
    with pytest.raises(InputFileError, match=r"line 3, column 'b' \(#2\): .* not a finite number"):
        files.read_csv_table(path)


def test_quoted_multiline_cell_keeps_editor_line_numbers(tmp_path):
    path = write(tmp_path, 'note,v\n"two\nlines",1\nok,bad\n')
    with pytest.raises(InputFileError, match=r"line 4, column 'v' \(#2\): 'bad'"):
        files.read_csv_column(path, "v")


# ----------------------------------------------------------------------------------------------
# CSV: bad headers and requests


def test_missing_column_lists_the_columns(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(InputFileError, match=r"no column 'c'; the columns are 'a', 'b', 'label'"):
        files.read_csv_table(path, columns=["a", "c"])
    with pytest.raises(InputFileError, match=r"no column 'target'"):
        files.read_csv_columns(path, "target")


def test_no_data_rows(tmp_path):
    with pytest.raises(InputFileError, match=r"data\.csv: no data rows"):
        files.read_csv_table(write(tmp_path, "a,b\n\n"))


def test_empty_file_and_missing_header(tmp_path):
    with pytest.raises(InputFileError, match=r"empty; a header row is required"):
        files.read_csv_table(write(tmp_path, ""))
    with pytest.raises(InputFileError, match=r"line 1: looks like data"):
        files.read_csv_table(write(tmp_path, "1,2\n3,4\n"))


def test_duplicate_header(tmp_path):
    path = write(tmp_path, "a,b,a\n1,2,3\n")
    with pytest.raises(InputFileError, match=r"line 1: column name 'a' appears twice "
                                             r"\(columns 1 and 3\)"):
        files.read_csv_table(path)


def test_label_among_features_and_string_columns_are_refused(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ValueError, match="also a feature column"):
        files.read_csv_columns(path, "label", feature_columns=["a", "label"])
    with pytest.raises(ValueError, match="list of column names"):
        files.read_csv_table(path, columns="a")


def test_missing_file_is_file_not_found(tmp_path):
    missing = str(tmp_path / "nowhere.csv")
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        files.read_csv_table(missing)
    with pytest.raises(FileNotFoundError):
        files.read_npz_arrays(str(tmp_path / "nowhere.npz"), ["x"])
    with pytest.raises(FileNotFoundError):
        files.read_npy(str(tmp_path / "nowhere.npy"))
    with pytest.raises(FileNotFoundError):
        files.read_text(str(tmp_path / "nowhere.txt"))


# ----------------------------------------------------------------------------------------------
# NumPy files


def test_npz_good_and_missing_key(tmp_path):
    path = str(tmp_path / "arrays.npz")
    np.savez(path, x=np.ones((2, 3)), y=np.arange(2))
    arrays = files.read_npz_arrays(path, ["x", "y"])
    assert set(arrays) == {"x", "y"} and arrays["x"].shape == (2, 3)
    with pytest.raises(KeyError, match=r"arrays\.npz: no array 'z'; the archive has 'x', 'y'"):
        files.read_npz_arrays(path, ["x", "z"])


def test_npz_with_nan_names_key_and_index(tmp_path):
    path = str(tmp_path / "arrays.npz")
    x = np.zeros((3, 4), dtype=np.float32)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    np.savez(path, x=x, y=np.arange(3))
    with pytest.raises(InputFileError,
                       match=r"arrays\.npz, key 'x': NaN at index \(1, 2\) \(1 more"):
        files.read_npz_arrays(path, ["y", "x"])


def test_npy_with_inf(tmp_path):
    path = str(tmp_path / "series.npy")
    np.save(path, np.array([0.0, 1.0, -np.inf]))
    with pytest.raises(InputFileError, match=r"series\.npy: -inf at index \(2\)"):
        files.read_npy(path)
    np.save(path, np.array([1, 2, 3]))
    np.testing.assert_array_equal(files.read_npy(path), [1, 2, 3])


def test_not_a_numpy_file(tmp_path):
    with pytest.raises(InputFileError, match="not a readable NumPy file"):
        files.read_npy(write(tmp_path, "hello", name="junk.npy"))


def test_check_finite():
    ints = np.array([[1, 2]], dtype=np.int64)
    assert files.check_finite(ints, "ints") is ints
    with pytest.raises(InputFileError, match=r"^weights: inf at index \(0, 1\)\.$"):
        files.check_finite(np.array([[1.0, np.inf]]), "weights")
    with pytest.raises(InputFileError, match=r"NaN at index \(\)"):
        files.check_finite(np.float64("nan"), "scalar")


# ----------------------------------------------------------------------------------------------
# Text and characters


def test_read_text_replaces_bad_bytes(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"ab\xffc")
    assert files.read_text(str(path)) == "ab\ufffdc"


def test_character_vocabulary_round_trip_and_stable_ids():
    vocabulary = files.CharacterVocabulary.from_text("hello world")
    assert vocabulary.characters == " dehlorw"
    assert vocabulary.size == 8
    ids = vocabulary.encode("world hello")
    assert ids.dtype == np.int32
    assert vocabulary.decode(ids) == "world hello"
    # Same set of characters in another order: same ids.
    other = files.CharacterVocabulary.from_text("dlrow olleh")
    np.testing.assert_array_equal(other.encode("hello"), vocabulary.encode("hello"))
    np.testing.assert_array_equal(vocabulary.encode(" dehlorw"), np.arange(8))
    assert vocabulary.decode([]) == ""


def test_character_vocabulary_errors():
    vocabulary = files.CharacterVocabulary.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'z' \(position 2\) is not in the vocabulary"):
        vocabulary.encode("abzc")
    with pytest.raises(ValueError, match=r"id 3 \(position 1\) is outside"):
        vocabulary.decode([0, 3])
    with pytest.raises(ValueError, match=r"id -1"):
        vocabulary.decode(np.array([-1]))
    with pytest.raises(ValueError, match="empty text"):
        files.CharacterVocabulary.from_text("")
