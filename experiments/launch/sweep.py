"""Sweeps: one launch, several runs that differ by a few gin bindings.

A sweep is declared in gin, e.g. the quickstart::

    sweep.variants = {
        'b16_e5':   ['train.batch_size = 16', 'train.epochs = 5'],
        'b160_e5':  ['train.batch_size = 160', 'train.epochs = 5'],
    }

Each variant is the base config (files and bindings) with the variant's bindings parsed last, and
gets its own run directory. An empty ``variants`` means a single run.
"""

import gin


@gin.configurable
def sweep(variants=None, report_columns=None):
    """Returns (ordered variant dict or None, columns of the printed table or None)."""
    if variants is None:
        return None, report_columns
    if isinstance(variants, (list, tuple)):
        variants = {f"variant{i}": v for i, v in enumerate(variants)}
    for name, bindings in variants.items():
        if isinstance(bindings, str) or not all(isinstance(b, str) for b in bindings):
            raise ValueError(
                f"sweep.variants[{name!r}] must be a list of gin binding strings, got "
                f"{bindings!r}.")
    return dict(variants), report_columns
