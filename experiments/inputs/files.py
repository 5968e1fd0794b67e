"""Strict readers for the files experiments name: CSV tables, .npz/.npy arrays and text.

Why a separate module: ``csv.DictReader`` plus ``float(...)`` fails in three bad ways. A short
row fills the missing cells with None and ``float(None)`` raises a bare TypeError that names no
file; a long row is silently truncated to the header; and ``nan``/``inf`` parse fine, so a run
trains on them and only shows a NaN loss epochs later. Likewise ``np.load`` happily returns arrays
holding NaN. Here every problem with a file's *content* is an ``InputFileError`` (a ValueError)
that names the file and, for CSV, the line (1-based, as an editor shows it, the header being line
1) and the column (by name and 1-based index), so the user can open the file and fix it. A file
that does not exist is a FileNotFoundError from ``experiments.common.paths.resolve``, which also
says where it looked.

No TensorFlow here: these readers are used by data sources, tools and tests alike, and importing
them must stay cheap.
"""

import csv
import math
import zipfile

import numpy as np

from experiments.common import paths


class InputFileError(ValueError):
    """A file exists but its content cannot be used; the message names the file (and place)."""


class MissingColumnError(InputFileError, KeyError):
    """A named column (or array) is not in the file; also a KeyError, like a missing dict key."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


# ----------------------------------------------------------------------------------------------
# Finiteness


def check_finite(array, what):
    """``array`` unchanged if it holds no NaN or inf; InputFileError naming the first bad index.

    Integer and boolean arrays cannot hold NaN or inf and always pass. The index is the first bad
    element in C order, so the user can find it (``what: NaN at index (3, 1)``).
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return array
    bad = ~np.isfinite(array)
    if not bad.any():
        return array
    index = np.unravel_index(int(np.argmax(bad)), array.shape)
    value = array[index]
    if np.isnan(value):
        kind = "NaN"
    elif np.iscomplexobj(value):
        kind = "inf"
    else:
        kind = "inf" if value > 0 else "-inf"
    where = "(" + ", ".join(str(int(i)) for i in index) + ")"
    count = int(bad.sum())
    more = f" ({count - 1} more non-finite values)" if count > 1 else ""
    raise InputFileError(f"{what}: {kind} at index {where}{more}.")


# ----------------------------------------------------------------------------------------------
# CSV


def _csv_rows(path):
    """(resolved path, [(line, cells)...]) of a CSV file, trailing blank lines dropped.

    ``line`` is where the row starts (1-based); a quoted cell may span lines. Decoding errors and
    malformed quoting become InputFileError with the line, instead of a bare csv.Error.
    """
    path = paths.resolve(path, what="CSV file")
    rows = []
    line = 1
    # utf-8-sig: a byte-order mark (Excel writes one) would otherwise stick to the first name.
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            for cells in reader:
                rows.append((line, cells))
                line = reader.line_num + 1
        except csv.Error as error:
            raise InputFileError(f"{path}, line {reader.line_num}: {error}.") from None
        except UnicodeDecodeError as error:
            raise InputFileError(f"{path}: not UTF-8 text ({error}).") from None
    while rows and _is_blank(rows[-1][1]):
        rows.pop()
    return path, rows


def _is_blank(cells):
    return not cells or (len(cells) == 1 and not cells[0].strip())


def _parse_header(path, rows):
    """The column names of the first row; InputFileError if missing, blank, unnamed or repeated."""
    if not rows:
        raise InputFileError(f"{path}: the file is empty; a header row is required.")
    line, cells = rows[0]
    if _is_blank(cells):
        raise InputFileError(f"{path}, line {line}: blank; a header row is required.")
    header = [name.strip() for name in cells]
    if all(_is_finite_number(name) for name in header):
        raise InputFileError(f"{path}, line {line}: looks like data ({', '.join(header)}); "
                             "a header row naming the columns is required.")
    for index, name in enumerate(header, start=1):
        if not name:
            raise InputFileError(f"{path}, line {line}: column {index} has no name.")
        if header.index(name) != index - 1:
            raise InputFileError(f"{path}, line {line}: column name {name!r} appears twice "
                                 f"(columns {header.index(name) + 1} and {index}).")
    return header


def _is_finite_number(text):
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _column_indices(path, header, columns):
    """0-based indices of ``columns`` in ``header``; InputFileError naming the columns if absent."""
    if isinstance(columns, str):
        raise ValueError(f"columns must be a list of column names, got the string {columns!r}.")
    columns = list(columns)
    if not columns:
        raise ValueError("columns must name at least one column.")
    missing = [name for name in columns if name not in header]
    if missing:
        raise MissingColumnError(f"{path}: no column {', '.join(map(repr, missing))}; "
                             f"the columns are {', '.join(map(repr, header))}.")
    return [header.index(name) for name in columns]


def _parse_cell(path, line, header, index, text):
    """The float in one cell; InputFileError naming line, column and the text found otherwise."""
    where = f"{path}, line {line}, column {header[index]!r} (#{index + 1})"
    stripped = text.strip()
    if not stripped:
        raise InputFileError(f"{where}: empty cell.")
    try:
        # float() accepts digit separators ("1_000"); a CSV number with one is almost surely a typo.
        value = float(stripped) if "_" not in stripped else None
    except ValueError:
        value = None
    if value is None:
        raise InputFileError(f"{where}: {text!r} is not a number.")
    if not math.isfinite(value):
        raise InputFileError(f"{where}: {text!r} is not a finite number.")
    return value


def read_csv_table(path, columns=None):
    """(header, values): the file's column names and the requested columns as float64 [rows, k].

    ``header`` is every column of the file, in file order; ``values`` holds the columns named in
    ``columns`` (default: all of them), in that order. Every row must have as many cells as the
    header (a short row is not padded, a long row is not truncated); every cell of a requested
    column must be a finite number. Other columns may hold text. Blank trailing lines are ignored.
    """
    path, rows = _csv_rows(path)
    header = _parse_header(path, rows)
    return header, _values(path, header, rows, header if columns is None else columns)


def _values(path, header, rows, columns):
    """float64 [rows, len(columns)] of the data rows, every row and requested cell checked."""
    indices = _column_indices(path, header, columns)
    data = rows[1:]
    if not data:
        raise InputFileError(f"{path}: no data rows after the header.")
    values = np.empty((len(data), len(indices)), dtype=np.float64)
    for row, (line, cells) in enumerate(data):
        if len(cells) != len(header):
            found = "blank line" if _is_blank(cells) else f"{len(cells)} cells"
            raise InputFileError(
                f"{path}, line {line}: {found}, the header has {len(header)} columns.")
        for out, index in enumerate(indices):
            values[row, out] = _parse_cell(path, line, header, index, cells[index])
    return values


def default_feature_columns(path, label_column):
    """Every column of the CSV file's header but ``label_column``, in file order: the features
    when none are named (a validation file is then read by these names, not by its own order)."""
    path, rows = _csv_rows(path)
    return [name for name in _parse_header(path, rows) if name != label_column]


def read_csv_columns(path, label_column, feature_columns=None, with_lines=False):
    """(x float32 [n, f], y float64 [n]): features and label of a CSV table (with ``with_lines``
    also the line each row starts on, for errors about a row's label).

    Features default to every column but the label, in file order. Naming the label among the
    features is refused: the model would simply copy its target.
    """
    if isinstance(feature_columns, str):
        raise ValueError(f"feature_columns must be a list of column names, "
                         f"got the string {feature_columns!r}.")
    path, rows = _csv_rows(path)
    header = _parse_header(path, rows)
    if feature_columns is None:
        feature_columns = [name for name in header if name != label_column]
    feature_columns = list(feature_columns)
    if label_column in feature_columns:
        raise ValueError(f"label column {label_column!r} is also a feature column.")
    if not feature_columns:
        raise InputFileError(f"{path}: no feature columns besides the label {label_column!r}.")
    values = _values(path, header, rows, [*feature_columns, label_column])
    x, y = values[:, :-1].astype(np.float32), values[:, -1].copy()
    if with_lines:
        return x, y, [line for line, _ in rows[1:]], path
    return x, y


def read_csv_column(path, column):
    """One column of a CSV table as a 1-D float64 array."""
    if not isinstance(column, str):
        raise ValueError(f"column must be a column name, got {column!r}.")
    _, values = read_csv_table(path, [column])
    return values[:, 0].copy()


# ----------------------------------------------------------------------------------------------
# NumPy files


_OBJECT_ARRAY = ("an object array (Python objects, stored as a pickle), which batchlab does not "
                 "load (a pickle can run code): save numbers, e.g. np.asarray(values, "
                 "dtype='float32').")


def check_numeric(array, where):
    """Refuses an array that holds no numbers (strings, Python objects): it would fail later in
    the model, with the whole array in the message."""
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{where}: values of type {array.dtype} are not numbers; convert them "
                         "(class names to ids, text to token ids) before giving them to "
                         "batchlab.")
    return array


def _load(path):
    """np.load without pickles; an unreadable archive or array is an InputFileError."""
    try:
        # allow_pickle=False: a data file must not be able to run code when it is loaded.
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        if "Object arrays cannot be loaded" in str(error):
            raise InputFileError(f"{path}: {_OBJECT_ARRAY}") from None
        if "pickle" in str(error):  # no NumPy header: NumPy suggests loading it unsafely
            raise InputFileError(
                f"{path}: not a readable NumPy file: it has no NumPy header (for a CSV file, "
                "use csv_file).") from None
        raise InputFileError(f"{path}: not a readable NumPy file ({error}).") from None


def read_npz_arrays(path, keys=None):
    """{key: array} for ``keys`` of an .npz archive (None: every array, in the archive's order),
    each float array checked to be finite.

    A missing key is a KeyError naming the file, the missing keys and the keys the archive has.
    """
    if isinstance(keys, str):
        raise ValueError(f"keys must be a list of array names, got the string {keys!r}.")
    path = paths.resolve(path, what="NumPy archive")
    archive = _load(path)
    if isinstance(archive, np.ndarray):
        raise InputFileError(f"{path}: an .npy array, not an .npz archive of named arrays.")
    with archive:
        keys = list(archive.files) if keys is None else list(keys)
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise KeyError(f"{path}: no array {', '.join(map(repr, missing))}; "
                           f"the archive has {', '.join(map(repr, archive.files)) or 'none'}.")
        arrays = {}
        for key in keys:  # each array is read here, lazily: its own errors name it
            try:
                arrays[key] = archive[key]
            except ValueError as error:
                if "Object arrays cannot be loaded" not in str(error):
                    raise InputFileError(f"{path}, key {key!r}: not readable ({error}).") \
                        from None
                raise InputFileError(f"{path}, key {key!r}: {_OBJECT_ARRAY}") from None
    for key, array in arrays.items():
        check_finite(array, f"{path}, key {key!r}")
    return arrays


def read_npy(path):
    """The array of an .npy file, checked to be finite if it is a float array."""
    path = paths.resolve(path, what="NumPy file")
    array = _load(path)
    if not isinstance(array, np.ndarray):
        array.close()
        raise InputFileError(f"{path}: an .npz archive, not an .npy array; "
                             "read it with read_npz_arrays.")
    return check_finite(array, path)


# ----------------------------------------------------------------------------------------------
# Text


def read_text(path, encoding="utf-8"):
    """The whole text of a file; undecodable bytes become U+FFFD.

    A corpus scraped from the web often has a few stray bytes; one of them should cost one
    replacement character, not the run.
    """
    path = paths.resolve(path, what="Text file")
    with open(path, encoding=encoding, errors="replace") as handle:
        return handle.read()


class CharacterVocabulary:
    """Characters <-> int32 ids for character-level models.

    ``from_text`` uses the sorted set of the corpus's characters, so the ids depend only on which
    characters occur, never on their order of appearance: the same corpus always gives the same
    ids, across runs and machines. The constructor keeps the order it is given, so a saved
    ``characters`` string restores the vocabulary exactly.
    """

    def __init__(self, characters):
        characters = list(characters)
        for character in characters:
            if not isinstance(character, str) or len(character) != 1:
                raise ValueError(f"vocabulary entries must be single characters, "
                                 f"got {character!r}.")
        if len(set(characters)) != len(characters):
            repeated = sorted({c for c in characters if characters.count(c) > 1})
            raise ValueError(f"vocabulary characters repeat: {repeated!r}.")
        if not characters:
            raise ValueError("a vocabulary needs at least one character.")
        self._characters = "".join(characters)
        self._ids = {character: i for i, character in enumerate(characters)}

    @classmethod
    def from_text(cls, text):
        """The vocabulary of the sorted set of characters in ``text``."""
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text.")
        return cls(sorted(set(text)))

    @property
    def size(self):
        """Number of characters (ids are 0 .. size - 1)."""
        return len(self._characters)

    @property
    def characters(self):
        """The characters as one string, the character with id i at position i."""
        return self._characters

    def encode(self, text):
        """int32 ids of ``text``; ValueError naming the first character not in the vocabulary."""
        try:
            ids = [self._ids[character] for character in text]
        except KeyError as error:
            character = error.args[0]
            raise ValueError(
                f"character {character!r} (position {text.index(character)}) is not in the "
                f"vocabulary of {self.size} characters.") from None
        return np.array(ids, dtype=np.int32)

    def decode(self, ids):
        """The text of a 1-D sequence of ids; ValueError for a non-integer or out-of-range id."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return ""
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be a 1-D sequence of integers, got {ids.dtype} "
                             f"with shape {ids.shape}.")
        bad = (ids < 0) | (ids >= self.size)
        if bad.any():
            position = int(np.argmax(bad))
            raise ValueError(f"id {int(ids[position])} (position {position}) is outside the "
                             f"vocabulary of {self.size} characters.")
        return "".join(self._characters[i] for i in ids.tolist())

    def __len__(self):
        return self.size

    def __contains__(self, character):
        return character in self._ids

    def __getitem__(self, index):
        """The character with id ``index``."""
        return self._characters[int(index)]

    def __repr__(self):
        return f"CharacterVocabulary(size={self.size})"
