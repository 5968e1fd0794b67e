"""A study's report from what is on disk: study.json and each run's result.json.

``records`` turns every run of a study directory into the record ``analysis.study_report``
reads (batch size, learning rate, rule, seed, validation curve, final metrics, B_simple,
throughput...), ``write`` writes report.md and its PNGs and puts the same figures and the HParams
experiment config into ``<study dir>/tensorboard``. Nothing here trains: ``main.py --report=DIR``
rebuilds a report of a finished, partly failed or still running study at any time.
"""

import html
import math
import os
import shutil
import tempfile

import tensorflow as tf

from callbacks.hparams import (final_metrics, write_experiment_config, write_final_metrics,
                              write_session_end)
from experiments.analysis import study_report
from experiments.analysis import study_statistics
from experiments.analysis.steps_to_result import value_at
from experiments.common.json_files import read_result
from experiments.launch import study_dir as study_dir_lib
from experiments.launch import study_extension

HPARAMS = ("batch_size", "micro_batch_size", "learning_rate", "rule", "seed", "epochs")


def record(run, run_dir):
    """The analysis record of one study.json run entry (its result.json when it finished)."""
    out = {"name": run["name"], "status": run["status"], "error": run.get("error"),
           **{k: (run.get("hparams") or {}).get(k) for k in HPARAMS}}
    result = read_result(os.path.join(run_dir, "result.json")) \
        if run["status"] == "finished" else None
    if result is None:
        if run["status"] == "finished":
            out.update(status="failed", error="result.json missing or unreadable")
        return out
    measured = result.get("measurements") or {}
    # a NaN metric, null in result.json, reads back as NaN (``read_result``): a run that
    # finished diverged counts as diverged instead of having no metric
    final = final_metrics(result.get("final_epoch") or {})
    out.update(curve=measured.get("curve") or {}, final=final,
               b_simple=measured.get("noise_scale/b_simple"),
               b_simple_curve=measured.get("noise_scale/b_simple_curve"),
               examples_per_sec=result.get("examples_per_sec"),
               wall_time_s=result.get("wall_time_s"), updates=result.get("updates"),
               batch_size=result.get("batch_size", out["batch_size"]), result=result,
               noise_raw=measured.get("noise_scale/raw"))
    return out


def records(study_dir, state=None):
    """Every run's record, statuses refreshed from the run directories."""
    state = study_dir_lib.refresh(study_dir, state or study_dir_lib.load(study_dir))
    return [record(run, os.path.join(study_dir, run["path"])) for run in state["runs"]]


def summary(study_dir, state):
    """``study_report.summarize`` of the study as it stands (no file written): what the
    extension of the learning rates plans from."""
    target = state.get("target") or {}
    return study_report.summarize(records(study_dir, state), target=target.get("value"),
                                  mode=target.get("mode", "max"),
                                  metric=target.get("metric", "val_accuracy"))


def write(study_dir, state=None):
    """report.md, its PNGs and the TensorBoard figures + HParams config; returns write_report's
    dict. Raises FileNotFoundError when ``study_dir`` holds no study.json."""
    state = state or study_dir_lib.load(study_dir)
    if state is None:
        raise FileNotFoundError(f"--report={study_dir}: no {study_dir_lib.STUDY_FILE} there; "
                                "give the directory a study launch printed.")
    runs = records(study_dir, state)
    target = state.get("target") or {}
    report = study_report.write_report(
        study_dir, runs, state.get("study", os.path.basename(study_dir)),
        target=target.get("value"), mode=target.get("mode", "max"),
        metric=target.get("metric", "val_accuracy"),
        extensions=study_extension.report_info(state))

    def write_tensorboard(log_dir):
        log_figures(log_dir, report["figures"], report.get("markdown"))
        write_hparams_config(log_dir, state, target.get("metric", "val_accuracy"),
                             report["summary"])

    _write_afresh(os.path.join(study_dir, "tensorboard"), write_tensorboard)
    write_run_metrics(study_dir, state, runs, report["summary"])
    return report


def _write_afresh(log_dir, write):
    """``write(directory)`` into a new directory that then replaces ``log_dir``. TensorBoard
    keeps the first metadata it reads for a tag: an HParams config, figure or text appended
    beside an earlier report's would leave the dashboard showing the first report's columns
    (its target) and text. Shards may write their reports at once, from processes that share a
    pid (containers): the new and the old directory get names of their own (``mkdtemp``), a
    ``log_dir`` another shard moved meanwhile is no error, and when another shard's report takes
    the place first, it stands."""
    parent = os.path.dirname(log_dir)
    fresh = tempfile.mkdtemp(dir=parent, prefix=".tensorboard-new-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(fresh, 0o777 & ~umask)  # mkdtemp's 0700 would become the report directory's
    old = tempfile.mkdtemp(dir=parent, prefix=".tensorboard-old-")
    moved = os.path.join(old, "tensorboard")
    try:
        write(fresh)
        try:
            os.replace(log_dir, moved)
        except FileNotFoundError:
            pass  # none yet, or another shard's report moved it meanwhile
        try:
            os.replace(fresh, log_dir)
        except OSError:
            if os.path.isdir(log_dir):
                return  # another shard's report took the place meanwhile: it stands
            if os.path.isdir(moved):
                os.replace(moved, log_dir)
            raise
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def rebuild(directory):
    """``--report=DIR``: the report of a study directory rebuilt (``write``), or of a comparison
    sweep's directory (a sweep.json with a comparison, no study.json); returns the text to print.

    report.md escapes user text for HTML (``study_report._text``: a run name holding ``<img>``
    renders as text in a markdown viewer), so ``>=`` is ``&gt;=`` in the file; the terminal
    shows the text unescaped, as the end-of-study summary prints it. A comparison report escapes
    nothing and is printed as written."""
    from experiments.launch import comparison  # noqa: PLC0415
    if not os.path.exists(os.path.join(directory, study_dir_lib.STUDY_FILE)) and \
            os.path.exists(os.path.join(directory, "sweep.json")):
        report = comparison.write_from_dir(directory)
        with open(report["report"], encoding="utf-8") as handle:
            return handle.read()
    report = write(directory)
    with open(report["report"], encoding="utf-8") as handle:
        return console_text(handle.read())


def console_text(markdown):
    """A study report's markdown for a terminal: its HTML escapes (``&gt;``, ``&lt;``,
    ``&amp;``) undone."""
    return html.unescape(markdown)


# Per-run HParams columns the study adds after training (the run cannot know them itself).
# Written by the report into each finished run: not a training or a validation metric.
STUDY_METRICS = ("steps_to_target", "reached_target", "b_simple_at_target", "b_simple_final",
                 "examples_per_sec")


def write_run_metrics(study_dir, state, runs, summary):
    """Each finished run's steps to target (interpolated crossing, NaN where not reached;
    ``reached_target`` 1 or 0, so that a dashboard sorted by steps does not hide the runs that
    never got there), its smoothed B_simple read at that crossing (``b_simple_at_target``; NaN
    where it did not reach the target or logged no B_simple) and at the end of training
    (``b_simple_final``: B_simple grows as the loss falls, so the two differ), and examples/s as
    ``hparams/<name>`` scalars in its own TensorBoard directory, and a failed run's session
    status; rewriting a report writes them again (the dashboard reads the last)."""
    target, metric, mode = summary["target"], summary["metric"], summary["mode"]
    for run, record_ in zip(state["runs"], runs):
        log_dir = os.path.join(study_dir, run["path"], "tensorboard")
        if record_.get("status") == "failed" and os.path.isdir(os.path.dirname(log_dir)):
            write_session_end(log_dir, "failure")
            continue
        if record_.get("status") != "finished":
            continue
        values = {"examples_per_sec": record_.get("examples_per_sec"),
                  "b_simple_final": record_.get("b_simple")}
        if target is not None:
            steps = study_statistics.run_crossing(record_, target, mode, metric)[0]
            # Not reached: NaN, not nothing. The dashboard reads each tag's last value, and a
            # report rebuilt with another target (the default one moves with the runs) must not
            # leave the previous target's numbers standing.
            values["steps_to_target"] = math.nan if steps is None else steps
            values["reached_target"] = float(steps is not None)
            at_target = value_at(record_.get("b_simple_curve"), steps) \
                if steps is not None else None
            values["b_simple_at_target"] = math.nan if at_target is None else at_target
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            write_final_metrics(log_dir, values, record_.get("updates") or 0)


def log_figures(log_dir, figures, markdown=None):
    """Each PNG as an image summary ``report/<name>`` (TensorBoard's Images tab), and the
    report's markdown as the text summary ``report/text`` (the Text tab)."""
    writer = tf.summary.create_file_writer(log_dir)
    try:
        with writer.as_default(), tf.summary.record_if(True):
            if markdown:
                tf.summary.text("report/text", markdown, step=0)
            for name, path in figures.items():
                if path and os.path.exists(path):
                    try:
                        image = tf.io.decode_png(tf.io.read_file(path), channels=4)
                    except tf.errors.InvalidArgumentError:
                        continue  # replaced meanwhile by another shard's report: it logs it
                    tf.summary.image(f"report/{name}", image[tf.newaxis], step=0)
    finally:
        writer.close()


def write_hparams_config(log_dir, state, metric, summary=None):
    """The HParams experiment config: one column per hyperparameter and per final metric; the
    steps-to-target column names its target (``summary``'s) and the report's own columns carry no
    training or validation type."""
    domains = {name: sorted({(run.get("hparams") or {}).get(name) for run in state["runs"]},
                            key=repr) for name in HPARAMS}
    if domains["rule"] == [None]:  # a grid of learning rates: its "none" would read as the
        del domains["rule"]        # rule 'none' (no scaling) of a study of rules
    base = metric[len("val_"):] if metric.startswith("val_") else metric
    tags = [metric, "val_loss", "loss", base, f"gap_{base}", "gap_loss", *STUDY_METRICS]
    names = {tag: tag for tag in dict.fromkeys(tags)}
    for train_side in ("loss", base):  # fit's, not an evaluation at the final weights
        names[train_side] = f"{train_side} (running average, last epoch)"
    if summary and summary.get("target") is not None:
        relation = ">=" if summary.get("mode", "max") == "max" else "<="
        names["steps_to_target"] = (f"updates to {summary['metric']} {relation} "
                                    f"{summary['target']:.4g}")
    write_experiment_config(log_dir, domains, names, untyped=STUDY_METRICS)
