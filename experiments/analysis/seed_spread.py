"""Arms of a sweep run at several seeds: mean, spread and range of each judged number.

The literature experiments (``gin/literature/*.gin``) name each run ``<arm>_s<seed>``; this module
groups a finished sweep's runs by arm and summarises any ``result.json`` entry over the seeds: n,
mean, sample standard deviation (ddof = 1; nan for one seed), min and max. Pure functions over
result dicts, plus a command line that reads a sweep's run directories::

    python -m experiments.analysis.seed_spread runs/<experiment>/<run_name> \\
        final_validation.accuracy final_validation.loss updates

prints one row per arm, each entry as ``mean ± sd [min, max]``.
"""

import dataclasses
import json
import math
import os
import re
import sys

import numpy as np

_SEED_SUFFIX = re.compile(r"^(?P<arm>.+)_s(?P<seed>\d+)$")


@dataclasses.dataclass(frozen=True)
class Spread:
    """One number over seeds: n, mean, sample standard deviation (nan for n = 1), min, max."""
    n: int
    mean: float
    sd: float
    low: float
    high: float
    non_finite: tuple = ()  # the runs whose value was NaN or infinite (left out of the rest)

    def text(self, digits=3):
        """``mean ± sd [min, max]`` (``mean [n = 1]`` for a single seed), then the runs left out
        for a non-finite value (a diverged seed is named, not silently dropped); whole numbers
        below 10^7 are written whole."""
        def number(value):
            if float(value).is_integer() and abs(value) < 1e7:
                return str(int(value))
            return f"{value:.{digits}g}"
        if self.n == 0:
            text = "-"
        elif self.n == 1:
            text = f"{number(self.mean)} [n = 1]"
        else:
            text = (f"{number(self.mean)} ± {number(self.sd)} "
                    f"[{number(self.low)}, {number(self.high)}]")
        if self.non_finite:
            text += f" (n = {self.n}; not finite: {', '.join(self.non_finite)})"
        return text


def arm_of(run_name):
    """(arm, seed index or None): ``'decay_lr_s2'`` -> ``('decay_lr', 2)``; a name without a
    ``_s<digits>`` suffix is its own arm."""
    match = _SEED_SUFFIX.match(run_name)
    if match is None:
        return run_name, None
    return match.group("arm"), int(match.group("seed"))


def spread(values):
    """``Spread`` of finite numbers; raises ValueError when there are none."""
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(f"spread needs finite numbers, got {array.tolist()}")
    sd = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    return Spread(n=int(array.size), mean=float(np.mean(array)), sd=sd,
                  low=float(np.min(array)), high=float(np.max(array)))


def lookup(result, dotted, missing=None):
    """``result['final_validation']['accuracy']`` for ``'final_validation.accuracy'``; a key
    without a dot is read at the top level. Missing entries give ``missing``."""
    value = result
    section, _, key = dotted.partition(".")
    for part in ((section, key) if key else (section,)):
        if not isinstance(value, dict) or part not in value:
            return missing
        value = value[part]
    return value


_MISSING = object()


def by_arm(results, entries):
    """{arm: {entry: Spread}} over the runs of each arm (in the order arms first appear).

    ``results``: dicts with a ``run`` name (or ``run_dir``, whose last part is the name) and the
    result.json contents. Entries a run lacks are left out of that arm's numbers (an entry no
    run has is absent from the arm).
    """
    grouped = {}
    for result in results:
        grouped.setdefault(arm_of(_run_name(result))[0], []).append(result)
    out = {}
    for arm, runs in grouped.items():
        out[arm] = {}
        for entry in entries:
            # result.json writes a non-finite number as null: a present null is a diverged
            # value, a missing entry is not one
            pairs = [(_run_name(r), lookup(r, entry, _MISSING)) for r in runs]
            numbers = [(name, math.nan if v is None else v) for name, v in pairs
                       if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))]
            values = [v for _, v in numbers if math.isfinite(v)]
            non_finite = tuple(name for name, v in numbers if not math.isfinite(v))
            if values:
                out[arm][entry] = dataclasses.replace(spread(values), non_finite=non_finite)
            elif non_finite:
                out[arm][entry] = Spread(n=0, mean=math.nan, sd=math.nan, low=math.nan,
                                         high=math.nan, non_finite=non_finite)
    return out


def _run_name(result):
    return result.get("run") or os.path.basename(os.path.normpath(result["run_dir"]))


def format_table(summary, entries, digits=3):
    """Plain-text table: one row per arm, one column per entry (``mean ± sd [min, max]``)."""
    header = ["arm", "n"] + list(entries)
    rows = []
    for arm, cells in summary.items():
        n = max((s.n for s in cells.values()), default=0)
        rows.append([arm, str(n)] + [cells[e].text(digits) if e in cells else "-"
                                     for e in entries])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def read_sweep(group_dir):
    """The result.json of every finished run directly under a sweep's group directory, each with
    its ``run`` name added, in the sweep's order (its ``sweep.json``; else sorted by name)."""
    names = sorted(os.listdir(group_dir))
    listing = os.path.join(group_dir, "sweep.json")
    if os.path.isfile(listing):
        with open(listing) as handle:
            ordered = [os.path.basename(os.path.normpath(p))
                       for p in json.load(handle).get("runs", [])]
        names = ordered + [n for n in names if n not in ordered]
    results = []
    for name in names:
        path = os.path.join(group_dir, name, "result.json")
        if os.path.isfile(path):
            with open(path) as handle:
                result = json.load(handle)
            result["run"] = name
            results.append(result)
    return results


def main(argv):
    if len(argv) < 3:
        print(__doc__.split("::")[1].strip().splitlines()[0].strip(), file=sys.stderr)
        return 2
    results = read_sweep(argv[1])
    if not results:
        print(f"No finished runs under {argv[1]}.", file=sys.stderr)
        return 1
    print(format_table(by_arm(results, argv[2:]), argv[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
