"""Tables of finished runs: what batch size did to loss, accuracy, the gap, time and updates."""


def batch_label(result):
    """The run's batch size; ``16->48`` when a schedule or the adaptive batch changed it, also
    when it came back to where it started (``16->16``: an adaptive batch that grew and shrank
    is not a run at one batch size); for stream data, whose B is its streams, ``8 (k 1->2)``
    when a schedule grew the windows per update."""
    first, final = result.get("batch_size"), result.get("final_batch_size")
    stages = result.get("batch_size_stages") or ()
    if first is None or final is None or (final == first and len(stages) < 2):
        return first
    if result.get("window_length") and final == first:
        # stream data: B is the S streams; a schedule grows the windows per update (k)
        return (f"{first} (k {result.get('num_micro_batches')}->"
                f"{result.get('final_num_micro_batches')})")
    return f"{first}->{final}"


DEFAULT_COLUMNS = (
    ("run", "run"),
    ("epochs", "epochs"),
    ("batch", batch_label),
    ("train loss", "final_epoch.loss"),
    ("val loss", "final_validation.loss"),
    ("val acc", "final_validation.accuracy"),
    ("val bpc", "final_validation.bits_per_character"),
    ("gap (loss)", "final_epoch.generalization_gap_loss"),
    ("seconds", "train_time_s"),
    ("updates", "updates"),
)


def _lookup(result, dotted):
    if callable(dotted):
        return dotted(result)
    value = result
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _format(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def has_metrics(results, columns=DEFAULT_COLUMNS):
    """Whether any result has a value for a column besides its name: a probe or a finder
    reports in its own words and has no row worth a table."""
    return any(_lookup(r, key) is not None for r in results for _, key in columns
               if key != "run")


def format_table(results, columns=DEFAULT_COLUMNS):
    """A fixed-width text table, one row per result dict (``run`` is the variant name).

    Columns that no result has (e.g. bits per character for a classifier) are left out.
    """
    columns = [c for c in columns if any(_lookup(r, c[1]) is not None for r in results)] \
        or list(columns)
    header = [title for title, _ in columns]
    rows = [[_format(_lookup(r, key)) for _, key in columns] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def stale_batch_norm_note(results):
    """One paragraph naming the runs whose BatchNormalization moving averages were still far
    from settled at their end (result.json ``batch_norm_statistics.stale``): their validation
    numbers normalise with those averages, so a table comparing batch sizes must say so. None
    when no run was stale."""
    stale = [(r.get("run"), r["batch_norm_statistics"]) for r in results
             if (r.get("batch_norm_statistics") or {}).get("stale")]
    if not stale:
        return None
    runs = ", ".join(f"{name} ({100 * s['initial_weight']:.0f}% after "
                     f"{s['moving_average_updates']} updates)" for name, s in stale)
    return ("BatchNormalization's moving averages were stale at the end of: " + runs + ". "
            "Their initial values still weighed that much, so these runs' validation and other "
            "inference-mode numbers are not those of their trained weights; lower the momentum "
            "(mlp.batch_norm_momentum) or train more updates before reading them as a batch-size "
            "effect (docs/measurement.md, \"BatchNormalization's moving averages\").")
