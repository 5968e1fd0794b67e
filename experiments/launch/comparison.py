"""A sweep that compares its variants (arms) over seeds: one adaptive run against fixed batch
sizes (``gin/experiments/adaptive_digits.gin``, ``adaptive_nqm.gin``; docs/adaptive.md).

    sweep.variants = {'fixed_b64': [...], 'adaptive_adascale': [...]}
    sweep.seeds = [0, 1, 2]                 # each arm once per seed: fixed_b64_s0, ...
    sweep.comparison = @comparison()
    comparison.reference = 'fixed_b64'      # the arm the others are judged against
    comparison.target_metric = 'val_accuracy'
    comparison.target = 0.95                # on each run's validation curve
                                            # (@measurements.validation_curve)

After the sweep's table, ``write`` reads every finished run's result.json, and
``analysis.adaptive_comparison`` gives each arm's updates, examples and seconds to the target
and final metric over its seeds, the verdicts against the reference, and the figure of B(t)
against c * B_simple(t) of the adaptive arms: ``comparison.md``, ``comparison.json`` and
``batch_size_vs_b_simple.png`` in the sweep's directory. The settings and the arms are kept in
``sweep.json``, so ``main.py --report=SWEEP_DIR`` rebuilds them at any time (``write_from_dir``).
"""

import dataclasses
import json
import math
import os
from typing import Optional

import gin

from experiments.common import checks
from experiments.common.json_files import read_json

REPORT = "comparison.md"
REPORT_JSON = "comparison.json"
FIGURE = "batch_size_vs_b_simple.png"


@dataclasses.dataclass(frozen=True)
class ComparisonSpec:
    """What ``comparison`` checked, and (set by ``sweep.sweep``) the arms: {arm: [run names]}."""

    reference: str
    target: float
    target_metric: str = "val_accuracy"
    target_mode: str = "max"
    cost_tolerance: float = 0.1
    metric_tolerance: float = 0.01
    arms: Optional[dict] = None

    def as_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values):
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


@gin.configurable
def comparison(reference=gin.REQUIRED, target=gin.REQUIRED, target_metric="val_accuracy",
               target_mode="max", cost_tolerance=0.1, metric_tolerance=0.01):
    """A ``ComparisonSpec`` for ``sweep.comparison``.

    Args:
      reference: the variant (arm) the others are judged against, e.g. the best fixed B.
      target: the value ``target_metric`` must reach on a run's validation curve.
      target_metric: a metric of the validation curve (``val_loss``, ``val_<metric>``).
      target_mode: 'max' (reach at least ``target``) or 'min' (at most).
      cost_tolerance: an arm matched the reference on updates, examples or seconds to the
        target when the means differ by at most this fraction (overlapping seeds' ranges
        beyond it are undecided).
      metric_tolerance: the same for the final metric.
    """
    if not isinstance(reference, str) or not reference:
        raise ValueError(f"comparison.reference must be the name of a variant, got "
                         f"{reference!r}.")
    if not isinstance(target_metric, str) or not target_metric:
        raise ValueError(f"comparison.target_metric must be a metric name such as "
                         f"'val_accuracy', got {target_metric!r}.")
    if target_mode not in ("max", "min"):
        raise ValueError(f"comparison.target_mode must be 'max' or 'min', got {target_mode!r}.")
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise ValueError(f"comparison.target must be a number, got {target!r}.")
    return ComparisonSpec(
        reference=reference, target=float(target), target_metric=target_metric,
        target_mode=target_mode,
        cost_tolerance=float(checks.positive_number(cost_tolerance,
                                                    "comparison.cost_tolerance")),
        metric_tolerance=float(checks.positive_number(metric_tolerance,
                                                      "comparison.metric_tolerance")))


def results_by_arm(group_dir, spec):
    """{arm: [result dicts of its finished runs]} in the arms' order, the names of the runs
    that did not finish (failed, running, never started), and {arm: its failed runs}."""
    arms, missing, failed = {}, [], {}
    for arm, names in (spec.arms or {}).items():
        arms[arm] = []
        for name in names:
            run_dir = os.path.join(group_dir, name)
            status = (read_json(os.path.join(run_dir, "status.json")) or {}).get("status")
            result = read_json(os.path.join(run_dir, "result.json")) \
                if status == "finished" else None
            if result is None:
                missing.append(name)
                failed[arm] = failed.get(arm, 0) + (status == "failed")
            else:
                arms[arm].append(result)
    return arms, missing, failed


def write(group_dir, spec, name=None):
    """Writes comparison.md, comparison.json and the figure into ``group_dir``; returns
    {"report", "report_json", "figure", "summary", "sentences", "missing"}."""
    from experiments.analysis import adaptive_comparison as analysis  # noqa: PLC0415

    arms, missing, failed = results_by_arm(group_dir, spec)
    summary = analysis.compare(arms, spec.reference, spec.target_metric, spec.target,
                               spec.target_mode, spec.cost_tolerance, spec.metric_tolerance,
                               failed)
    fixed = {arm: summary["arms"][arm]["description"].get("batch_size")
             for arm in summary["fixed"]}
    figure = None
    if summary["adaptive"]:
        figure = analysis.plot_batch_vs_b_simple(
            {arm: arms[arm] for arm in summary["adaptive"]}, os.path.join(group_dir, FIGURE),
            {arm: size for arm, size in fixed.items() if size},
            {arm: [run["updates"] for run in summary["arms"][arm]["runs"]]
             for arm in summary["adaptive"]})
    if name is None:  # <experiment>/<run name>
        parent, leaf = os.path.split(os.path.normpath(group_dir))
        name = f"{os.path.basename(parent)}/{leaf}"
    text = analysis.markdown(summary, name, figure)
    if missing:
        text += (f"\n{len(missing)} run(s) did not finish: {', '.join(missing)}. A failed "
                 "run counts as a seed of its arm that did not reach the target; a run still "
                 "running or never started is left out.\n")
    report = os.path.join(group_dir, REPORT)
    _write_atomically(report, text)
    machine = os.path.join(group_dir, REPORT_JSON)
    _write_atomically(machine, json.dumps(_jsonable({**summary, "missing": missing,
                                                     "settings": spec.as_json()}),
                                          indent=2, sort_keys=True) + "\n")
    return {"report": report, "report_json": machine, "figure": figure, "summary": summary,
            "sentences": analysis.sentences(summary), "missing": missing}


def write_from_dir(group_dir):
    """``write`` from what a comparison sweep left in ``group_dir`` (its sweep.json); raises
    FileNotFoundError when it holds no comparison."""
    stored = read_json(os.path.join(group_dir, "sweep.json")) or {}
    if not stored.get("comparison"):
        raise FileNotFoundError(f"--report={group_dir}: no study.json, and no sweep.json with a "
                                "comparison there; give the directory a study or a comparison "
                                "sweep printed.")
    spec = ComparisonSpec.from_json(stored["comparison"])
    return write(group_dir, spec)


def _write_atomically(path, text):
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _jsonable(value):
    """Plain JSON: tuples as lists, non-finite floats as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
