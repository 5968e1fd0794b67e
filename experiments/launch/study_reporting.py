"""A study's report from what is on disk: study.json and each run's result.json.

``records`` turns every run of a study directory into the record ``analysis.study_report``
reads (batch size, learning rate, rule, seed, validation curve, final metrics, B_simple,
throughput...), ``write`` writes report.md and its PNGs and puts the same figures and the HParams
experiment config into ``<study dir>/tensorboard``. Nothing here trains: ``main.py --report=DIR``
rebuilds a report of a finished, partly failed or still running study at any time.
"""

import json
import os

import tensorflow as tf

from callbacks.hparams import final_metrics, write_experiment_config
from experiments.analysis import study_report
from experiments.launch import study_dir as study_dir_lib

HPARAMS = ("batch_size", "micro_batch_size", "learning_rate", "rule", "seed", "epochs")


def _read_result(run_dir):
    try:
        with open(os.path.join(run_dir, "result.json")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def record(run, run_dir):
    """The analysis record of one study.json run entry (its result.json when it finished)."""
    out = {"name": run["name"], "status": run["status"], "error": run.get("error"),
           **{k: (run.get("hparams") or {}).get(k) for k in HPARAMS}}
    result = _read_result(run_dir) if run["status"] == "finished" else None
    if result is None:
        if run["status"] == "finished":
            out.update(status="failed", error="result.json missing or unreadable")
        return out
    measured = result.get("measurements") or {}
    final = final_metrics(result.get("final_epoch") or {})
    out.update(curve=measured.get("curve") or {}, final=final,
               b_simple=measured.get("noise_scale/b_simple"),
               b_simple_curve=measured.get("noise_scale/b_simple_curve"),
               examples_per_sec=result.get("examples_per_sec"),
               wall_time_s=result.get("wall_time_s"), updates=result.get("updates"),
               batch_size=result.get("batch_size", out["batch_size"]))
    return out


def records(study_dir, state=None):
    """Every run's record, statuses refreshed from the run directories."""
    state = study_dir_lib.refresh(study_dir, state or study_dir_lib.load(study_dir))
    return [record(run, os.path.join(study_dir, run["path"])) for run in state["runs"]]


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
        metric=target.get("metric", "val_accuracy"))
    log_dir = os.path.join(study_dir, "tensorboard")
    log_figures(log_dir, report["figures"])
    write_hparams_config(log_dir, state, target.get("metric", "val_accuracy"))
    return report


def log_figures(log_dir, figures):
    """Each PNG as an image summary ``report/<name>`` (TensorBoard's Images tab)."""
    writer = tf.summary.create_file_writer(log_dir)
    try:
        with writer.as_default():
            for name, path in figures.items():
                if path and os.path.exists(path):
                    image = tf.io.decode_png(tf.io.read_file(path), channels=4)
                    tf.summary.image(f"report/{name}", image[tf.newaxis], step=0)
    finally:
        writer.close()


def write_hparams_config(log_dir, state, metric):
    """The HParams experiment config: one column per hyperparameter and per final metric."""
    domains = {name: sorted({(run.get("hparams") or {}).get(name) for run in state["runs"]},
                            key=repr) for name in HPARAMS}
    base = metric[len("val_"):] if metric.startswith("val_") else metric
    tags = [metric, "val_loss", "loss", base, f"gap_{base}", "gap_loss"]
    write_experiment_config(log_dir, domains, list(dict.fromkeys(tags)))
