"""Class labels checked up front: whole numbers, from 0, below the number of classes.

A fractional label (1.7) would be truncated to a class by a cast and a negative one fails at the
first update inside TensorFlow (a long traceback, after the run directory exists). Every source
checks its labels here when it loads them, and the error names where the bad label is: the file
and line for CSV, the file and row for other files, the row for arrays.
"""

import numpy as np


def check_classes(y, where, num_classes=None, row_name=None):
    """``y`` as int64 if every label is a class id in [0, num_classes) (num_classes None: any
    non-negative whole number); ValueError naming the first bad label's place otherwise.

    Args:
      y: labels, shape [n] or [n, 1] (other shapes, such as one-hot rows, are returned as they
        are: they are not class ids).
      where: what the labels come from (a file, a source's name), as the error starts.
      num_classes: the number of classes, when known.
      row_name: function of a 0-based row giving how the user finds it (default ``row i``).
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        flat = y[:, 0]
    elif y.ndim == 1:
        flat = y
    else:
        return y
    row_name = row_name or (lambda row: f"row {row}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{where}: class labels must be integers, got {y.dtype} labels.")
    problems = []
    if np.issubdtype(flat.dtype, np.inexact):
        problems.append((~np.isfinite(flat) | (flat != np.round(flat)),
                         "is not a whole number (a class label must be an integer)"))
    problems.append((flat < 0, "is negative (classes are 0, 1, ...)"))
    if num_classes is not None:
        problems.append((flat >= num_classes,
                         f"is not below the number of classes ({num_classes})"))
    for bad, why in problems:
        if bad.any():
            row = int(np.argmax(bad))
            count = int(bad.sum())
            more = f" ({count - 1} more such label{'s' if count > 2 else ''})" if count > 1 else ""
            value = flat[row].item()
            raise ValueError(f"{where}, {row_name(row)}: label {value!r} {why}{more}.")
    return y.astype(np.int64)
