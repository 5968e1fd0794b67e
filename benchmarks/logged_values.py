"""Every value a run logged, in one canonical JSON, and a bit-for-bit comparison of two of them.

A refactor of the measurement code must keep what users read: each ``result.json`` number and
each TensorBoard point (tag, step, value). This script records both for the runs that the
measurement-architecture change was checked on, so that the same command at two commits can be
compared exactly:

    python benchmarks/logged_values.py record --out /tmp/before.json    # at the old commit
    python benchmarks/logged_values.py record --out /tmp/after.json     # at the new one
    python benchmarks/logged_values.py compare /tmp/before.json /tmp/after.json

``record`` trains, each in its own ``main.py`` process with ``train.deterministic_ops = True``:
``measure_digits.gin``, ``digits_mlp.gin``, ``char_lm.gin`` (1 epoch), one arm of
``smith_increase_batch.gin`` (``increase_batch``, shortened), and a plain Keras ``model.fit`` with
batchlab's callbacks (``plain_fit``, in this process). Timing values (wall time, throughput,
heartbeats, package versions, paths) are left out: they differ between any two runs.
"""

import argparse
import glob
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNS = {
    "measure_digits": ["--gin_file=gin/experiments/measure_digits.gin"],
    "digits_mlp": ["--gin_file=gin/experiments/digits_mlp.gin"],
    "char_lm": ["--gin_file=gin/experiments/char_lm.gin", "--gin_bindings=train.epochs = 1"],
    "smith_increase_batch": [
        "--gin_file=gin/literature/smith_increase_batch.gin",
        "--gin_bindings=train.epochs = 6",
        "--gin_bindings=EPOCHS_OF_CHANGE = [2, 4]",
        "--gin_bindings=UPDATES_OF_CHANGE = [90, 180]",
        "--gin_bindings=sweep.variants = {'increase_batch': ["
        "'train.batch_size_schedule = @batch_size_schedule()', "
        "'batch_size_schedule.boundaries = %EPOCHS_OF_CHANGE', "
        "'batch_size_schedule.factor = 5']}",
    ],
}

# result.json keys and TensorBoard tags (at any depth) that measure time, place or machine, not
# training: those containing one of these words, or ending in ``_s``.
VOLATILE = ("time", "per_sec", "seconds", "wall", "memory", "run_dir", "versions", "throughput",
            "heartbeat", "pid", "host")


def _volatile(key):
    key = str(key)
    return key.endswith("_s") or any(part in key for part in VOLATILE)


def _clean(value):
    """``value`` without volatile keys; floats kept exactly (as their repr)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items()) if not _volatile(k)}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def event_points(log_dir):
    """{split/tag: [[step, value], ...]} of every scalar in the event files under ``log_dir``
    (values as their float32 repr, in file order)."""
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    points = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        split = os.path.relpath(os.path.dirname(path), log_dir)
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if _volatile(value.tag):
                    continue
                if value.HasField("tensor"):
                    array = tf.make_ndarray(value.tensor)
                    if array.dtype.kind not in "fiu" or array.size != 1:
                        continue  # text, hparams, histograms
                    number = float(np.ravel(array)[0])
                elif value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    continue
                points.setdefault(f"{split}/{value.tag}", []).append(
                    [int(event.step), repr(number)])
    return {tag: sorted(values) for tag, values in sorted(points.items())}


def run_record(run_dir):
    with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    return {"result": _clean(result), "tensorboard": event_points(os.path.join(run_dir,
                                                                               "tensorboard"))}


def record_main_run(name, flags, output_dir):
    command = [sys.executable, "main.py", f"--output_dir={output_dir}", f"--run_name={name}",
               "--gin_bindings=train.deterministic_ops = True",
               "--gin_bindings=train.verbose = 0", *flags]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    results = sorted(glob.glob(os.path.join(output_dir, "**", "result.json"), recursive=True))
    return {os.path.relpath(os.path.dirname(path), output_dir): run_record(os.path.dirname(path))
            for path in results}


def record_plain_fit(output_dir):
    """A plain Keras ``model.fit`` (no batchlab loop) with batchlab's callbacks on a model
    wrapped for virtual batches (k = 4, so the noise scale is defined)."""
    sys.path.insert(0, ROOT)
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from callbacks.generalization_gap import GeneralizationGap, fixed_subset  # noqa: PLC0415
    from callbacks.gradient_noise_scale import GradientNoiseScale  # noqa: PLC0415
    from callbacks.gradient_norm import GradientNorm  # noqa: PLC0415
    from callbacks.periodic_evaluation import PeriodicEvaluation  # noqa: PLC0415
    from callbacks.weight_distance import WeightDistance  # noqa: PLC0415
    from experiments.engine.virtual_batch_model import as_virtual_batch_model  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64")
    x_val, y_val = x[:128], y[:128]
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    # The same model at either side of the measurement-architecture change.
    norms = {"measure_gradient_norms": True} if "measure_gradient_norms" in \
        inspect.signature(as_virtual_batch_model).parameters else {"measure_every_n_updates": 1}
    model = as_virtual_batch_model(inner, micro_batch_size=8, track_gradient_noise=True, **norms)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    log_dir = os.path.join(output_dir, "plain_fit", "tensorboard")
    measurements = [
        GradientNorm(log_dir, every_n_updates=3),
        WeightDistance(log_dir, every_n_updates=4),
        GradientNoiseScale(log_dir, every_n_updates=5, horizon_examples=256),
        GeneralizationGap(fixed_subset(x, y, 64), (x_val, y_val), log_dir=log_dir,
                          batch_size=32),
        PeriodicEvaluation((x_val, y_val), every_n_updates=7, log_dir=log_dir, batch_size=64),
    ]
    history = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0,
                        validation_data=(x_val, y_val), callbacks=measurements)
    result = {"history": history.history}
    for measurement in measurements:
        result[type(measurement).__name__] = measurement.result()
        result[type(measurement).__name__ + ".history"] = measurement.history
    return {"plain_fit": {"result": _clean(json.loads(json.dumps(result, default=float))),
                          "tensorboard": event_points(log_dir)}}


def record(args):
    out = {}
    names = args.only or [*RUNS, "plain_fit"]
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            print(f"recording {name}", flush=True)
            target = os.path.join(scratch, name)
            if name == "plain_fit":
                out.update(record_plain_fit(target))
            else:
                for run, values in record_main_run(name, RUNS[name], target).items():
                    out[f"{name}:{run}"] = values
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(out, handle, indent=1, sort_keys=True)
    print(f"{len(out)} runs recorded in {args.out}")


def _diff(before, after, path, found, limit=20):
    if len(found) >= limit:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            if key not in before or key not in after:
                found.append(f"{path}/{key}: only in {'after' if key in after else 'before'}")
            else:
                _diff(before[key], after[key], f"{path}/{key}", found, limit)
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after)):
            _diff(b, a, f"{path}[{i}]", found, limit)
    elif before != after:
        found.append(f"{path}: {str(before)[:80]} -> {str(after)[:80]}")


def compare(args):
    with open(args.before, encoding="utf-8") as handle:
        before = json.load(handle)
    with open(args.after, encoding="utf-8") as handle:
        after = json.load(handle)
    failed = False
    print(f"{'run':48s} {'result values':>13s} {'TB points':>10s}  identical")
    for run in sorted(set(before) | set(after)):
        if run not in before or run not in after:
            print(f"{run:48s} only in {'after' if run in after else 'before'}")
            failed = True
            continue
        found = []
        _diff(before[run], after[run], run, found)
        values = _count(before[run]["result"])
        points = sum(len(v) for v in before[run]["tensorboard"].values())
        print(f"{run:48s} {values:13d} {points:10d}  {'yes' if not found else 'NO'}")
        for line in found:
            print("    " + line)
        failed |= bool(found)
    sys.exit(1 if failed else 0)


def _count(value):
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count(v) for v in value)
    return 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("--out", required=True)
    rec.add_argument("--only", nargs="*", choices=[*RUNS, "plain_fit"])
    cmp_ = commands.add_parser("compare")
    cmp_.add_argument("before")
    cmp_.add_argument("after")
    args = parser.parse_args()
    record(args) if args.command == "record" else compare(args)


if __name__ == "__main__":
    main()
