"""From command-line flags to runs: parse gin, then one run, a sweep or a study.

Sweeps (``sweep.variants``) and studies (``study.*``, see ``study``) both become a list of
``grid.RunSpec`` run by ``executor`` (in process, or ``--jobs`` child processes). Every run is
parsed and its batch layout checked before the first one starts; a failing run never stops the
others.
"""

import inspect
import json
import os

import gin

from experiments.analysis import lr_range, tables
from experiments.common import checks
from experiments.common.json_files import read_json, read_result
from experiments.launch import comparison as comparison_lib
from experiments.launch import executor, worker
from experiments.launch import grid as grid_lib
from experiments.launch import outcomes as outcomes_lib
from experiments.launch import points, precedence, spares
from experiments.launch import study as study_lib
from experiments.launch import study_dir as study_dir_lib
from experiments.launch import study_launch
from experiments.launch import sweep as sweep_lib
from experiments.launch.gin_config import (ConfigError, check_required, effective_value, parse,
                                           query)
from experiments.run import run_dir as run_dir_lib
from experiments.run import runner

QUICKSTART = os.path.join("gin", "quickstart.gin")


def experiment_name(gin_files):
    return os.path.splitext(os.path.basename(gin_files[-1]))[0] if gin_files else "quickstart"


def launch(gin_files=(), gin_bindings=(), output_dir="runs", print_fn=print, jobs=1, shard=None,
           run_name=None):
    """Runs what the gin files describe (one run, a sweep or a study).

    Returns the list of results of a run or sweep (a failed sweep run's result has
    ``status: failed`` and its ``error``), or for a study the dict of
    ``study_launch.launch_study``. ``jobs``, ``shard`` and ``run_name`` apply to sweeps and
    studies (``shard`` to studies only).
    """
    gin_files = list(gin_files) or [QUICKSTART]
    jobs = _check_flags(jobs, output_dir, run_name)  # before gin: a bad flag costs no parse
    files = parse(gin_files, gin_bindings)
    experiment = experiment_name(files)
    try:
        spec = study_lib.study()
    except ValueError as error:
        raise ConfigError(str(error)) from error
    try:
        variants, columns, comparison = sweep_lib.sweep()
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if (spec is not None or variants) and query("train.mode") == "find_micro_batch":
        # each run of the group would probe and print bindings that do not say which run they
        # are for, and the group's directory would hold runs that trained nothing
        raise ConfigError(
            "train.mode = 'find_micro_batch' cannot run inside a sweep or a study, but "
            f"{'study.batch_sizes' if spec is not None else 'sweep.variants'} is bound: run "
            "the finder on one configuration (the experiment's gin file without the sweep or "
            "study, its bindings on the command line).")
    if spec is not None:
        if variants:
            raise ConfigError("These gin files declare both sweep.variants and a study; keep one.")
        try:
            count = grid_lib.parse_shard(shard)[1]
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if count > 1 and not run_name:  # each shard would write a study of its own
            raise ConfigError(f"--shard={shard} needs --run_name: every shard writes into one "
                              "study directory, <output_dir>/<study>/<run_name>, the same for "
                              "all of them.")
        print_fn(f"Study {experiment}: configuration parsed; checking every run of its grid "
                 f"({', '.join(files)}).")
        _start_workers(jobs, files, gin_bindings)
        try:
            return study_launch.launch_study(spec, experiment, files, gin_bindings, output_dir,
                                             jobs=jobs, shard=shard, run_name=run_name,
                                             print_fn=print_fn)
        except precedence.OverrideRefused as error:
            raise ConfigError(str(error)) from None
        finally:
            spares.release()  # workers no slot took (a refused grid, fewer runs than jobs)
    if shard not in (None, "", "0/1"):
        raise ConfigError(f"--shard={shard} applies to studies; these gin files declare none.")
    if not variants:
        if jobs > 1:
            raise ConfigError(f"--jobs={jobs} applies to sweeps and studies (runs trained at "
                              "once); these gin files declare one run.")
        check_required(runner.train, "train")
        # A named single run is resumable: relaunching the same command continues it.
        result = runner.train(output_dir=output_dir, experiment=experiment, run_name=run_name,
                              config_text=gin.config_str(), resumable=bool(run_name))
        result["run"] = experiment
        if tables.has_metrics([result]):
            print_fn(tables.format_table([result]))
        suggestion = lr_range.suggestion_sentence(result)
        if suggestion:
            print_fn("\n" + suggestion)
        # Ends as a sweep's launch does: where to look. Only for a run this launch wrote
        # (a probe's result names the run it read, and writes no TensorBoard logs there).
        if result.get("run_dir") and "experiment" in result:
            print_fn(f"\nRun: {result['run_dir']}   (tensorboard --logdir {result['run_dir']})")
        return [result]
    try:
        return _launch_sweep(files, gin_bindings, output_dir, experiment, variants, columns,
                             jobs, run_name, print_fn, comparison)
    finally:
        spares.release()  # workers no slot took


def _check_flags(jobs, output_dir, run_name):
    """``jobs`` as an int once the flags are checked; a ``ConfigError`` naming the flag (the
    user's, not a run's binding) otherwise."""
    try:
        jobs = checks.positive_int(jobs, "--jobs")
        run_dir_lib.check_user_run_name(run_name)
        run_dir_lib.check_output_dir(output_dir)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return jobs


def _start_workers(jobs, files, gin_bindings):
    """The ``--jobs`` workers, started once the configuration parsed (a bad flag or binding
    starts none): their TensorFlow import overlaps the check of every run here."""
    if jobs > 1:
        spares.start(jobs, files, gin_bindings)


def _launch_sweep(files, gin_bindings, output_dir, experiment, variants, columns, jobs, run_name,
                  print_fn, comparison=None):
    """Every variant checked, then run through the executor; the table printed and saved (and,
    with ``sweep.comparison``, the comparison of its arms written)."""
    runs = precedence.with_command_line_last(grid_lib.from_variants(variants), gin_bindings,
                                             "sweep variant", print_fn=print_fn)
    _check_required_in_variants(runs)
    if comparison is not None:
        study_launch.check_target_metric(comparison, "comparison.target_metric")
    print_fn(f"Sweep {experiment}: {len(runs)} variant(s); checking each.")
    _start_workers(jobs, files, gin_bindings)
    parameters = sweep_lib.bound_parameters(runs)
    hparams = sweep_lib.fold_learning_rates(points.check_all(
        files, gin_bindings, runs, "sweep variant",
        inspect=lambda run: sweep_lib.configured_hparams(parameters, effective_value)))
    group_dir = _sweep_dir(output_dir, experiment, run_name, variants, gin.config_str())
    done, todo = _sweep_progress(group_dir, runs)
    if done:
        print_fn(f"Sweep {group_dir}: {len(done)} variant(s) already finished, {len(todo)} to "
                 "run (interrupted ones resume where they stopped).")

    def run_in_process(job):
        print_fn(f"\n=== {experiment}: {job.spec.name} ({'; '.join(job.spec.bindings)})")
        return worker.train_here(files, list(gin_bindings) + list(job.spec.bindings),
                                   job.run_dir)

    outcomes = executor.execute([executor.Job(r, os.path.join(group_dir, r.name)) for r in todo],
                                run_in_process, files, gin_bindings, jobs, print_fn)
    executor.wait_for_workers()
    by_name = {o.name: o for o in list(done) + list(outcomes)}
    results = [_row(by_name[r.name]) for r in runs if r.name in by_name]
    _write_sweep_hparams(group_dir, runs, by_name, hparams, print_fn)
    table = tables.format_table(results, _columns(columns))
    scaling = lr_range.scaling_sentence(results)  # range tests at several batch sizes
    if scaling:
        table += "\n\n" + scaling
    batch_norm = tables.stale_batch_norm_note(results)
    if batch_norm:
        table += "\n\n" + batch_norm
    errors = {r["run"]: r["error"] for r in results
              if r.get("status") == "failed" and r.get("error")}
    if errors:  # a variant refused before its run directory existed has no other record
        table += "\n\nFailed:\n" + "\n".join(f"  {name}: {error}"
                                               for name, error in errors.items())
    with open(os.path.join(group_dir, "table.txt"), "w") as handle:
        handle.write(table + "\n")
    config = (read_json(os.path.join(group_dir, "sweep.json")) or {}).get("config")
    stored = {"variants": variants, "config": config, "runs": [r["run_dir"] for r in results],
              "status": {r["run"]: r["status"] for r in results}, "errors": errors}
    if comparison is not None:
        stored["comparison"] = comparison.as_json()
    _write_json(os.path.join(group_dir, "sweep.json"), stored)
    print_fn("\n" + table)
    if comparison is not None:
        _write_comparison(group_dir, comparison, print_fn)
    print_fn(f"\nRuns: {group_dir}   (tensorboard --logdir {group_dir})")
    return results


def _write_comparison(group_dir, comparison, print_fn):
    """The comparison of the sweep's arms (``comparison.write``), its verdicts printed; a failure
    to write it is printed and does not lose the sweep."""
    try:
        written = comparison_lib.write(group_dir, comparison)
    except (OSError, ValueError) as error:
        print_fn(f"Comparison for {group_dir} not written: {error}")
        return
    print_fn("\n" + "\n".join(f"- {sentence}" for sentence in written["sentences"]))
    print_fn(f"\nComparison: {written['report']}")


def _write_sweep_hparams(group_dir, runs, by_name, hparams, print_fn):
    """The sweep's HParams dashboard (``sweep.write_hparams``); a failure to write it is
    printed and does not lose the sweep's table."""
    try:
        sweep_lib.write_hparams(group_dir, runs, by_name, hparams)
    except (OSError, ValueError) as error:
        print_fn(f"HParams for {group_dir} not written: {error}")


def _check_required_in_variants(runs):
    """Each ``gin.REQUIRED`` parameter of ``train`` must be bound by the base or by the
    variant; a ConfigError naming the first variant without it."""
    required = [name for name, param in inspect.signature(runner.train).parameters.items()
                if param.default is gin.REQUIRED]
    for run in runs:
        keys = {precedence.binding_key(b) for b in run.bindings}
        missing = [n for n in required
                   if ("", "train", n) not in keys and query(f"train.{n}", _UNSET) is _UNSET]
        if missing:
            raise ConfigError(f"In sweep variant {run.name!r}: train.{missing[0]} is not set: "
                              "bind it in a gin file, in the variant or with "
                              f"--gin_bindings='train.{missing[0]} = ...'.")


_UNSET = object()


def _row(outcome):
    """A sweep table row: the run's result, or its name, status and error."""
    row = dict(outcome.result or {}, run_dir=outcome.run_dir)
    row.update(run=outcome.name, status=outcome.status)
    if outcome.error:
        row["error"] = outcome.error
    return row


def _sweep_dir(output_dir, experiment, run_name, variants, config_text):
    """``<output_dir>/<experiment>/<run_name or timestamp>``. Without a name, a new directory;
    with one, a relaunch reuses it (as a study's): it must hold the same variants and the same
    base configuration (its ``sweep.json``, written first: ``config``, the parsed files and
    bindings, as a run's ``config.gin``; those that do not change results may differ), else
    the launch is refused (variants trained on two configurations would share one table)."""
    variants = json.loads(json.dumps(variants))  # as sweep.json holds them (tuples as lists)
    if not run_name:
        path = run_dir_lib.new_directory(os.path.join(output_dir, experiment))
        _write_json(os.path.join(path, "sweep.json"), {"variants": variants,
                                                       "config": config_text})
        return path
    run_dir_lib.check_parent(os.path.join(output_dir, experiment))
    path = os.path.join(output_dir, experiment, run_name)
    stored = read_json(os.path.join(path, "sweep.json"))
    if stored is not None and stored.get("variants") != variants:
        raise ConfigError(f"{path} holds a sweep of other variants (--run_name={run_name}); "
                          "relaunch it with the same gin files and bindings, or use another "
                          "--run_name.")
    if stored is not None and stored.get("config") is not None:
        diff = run_dir_lib.config_difference(stored["config"], config_text)
        if diff:
            raise ConfigError(
                f"{path} holds a sweep launched with another configuration "
                f"(--run_name={run_name}); relaunch it with the same gin files and bindings, "
                "or use another --run_name. The difference:\n" + "\n".join(diff))
    if stored is None and os.path.exists(os.path.join(path, "sweep.json")):
        raise ConfigError(
            f"{path}/sweep.json is not valid JSON (damaged, e.g. by a crash while it was "
            "written); the sweep's runs are intact. Restore the file, or use another "
            "--run_name.")
    if stored is None and os.path.exists(path) and os.listdir(path):
        raise ConfigError(f"{path} exists and holds no sweep; use another --run_name.")
    os.makedirs(path, exist_ok=True)
    if stored is None:
        _write_json(os.path.join(path, "sweep.json"), {"variants": variants,
                                                       "config": config_text})
    return path


def _sweep_progress(group_dir, runs):
    """(outcomes of the variants already finished, the variants to run): a failed variant is set
    aside (``<run>.attempt-K``) and starts afresh, an interrupted one resumes in place."""
    done, todo = [], []
    for run in runs:
        path = os.path.join(group_dir, run.name)
        status, _ = study_dir_lib.run_status(path)
        if status == "running":  # live, in another launch: reported, not trained twice
            done.append(outcomes_lib.Outcome(run.name, path, "running", 0.0,
                                             error="running in another launch"))
            continue
        if status == "finished":
            done.append(outcomes_lib.Outcome(run.name, path, "finished", 0.0,
                                             result=read_result(os.path.join(path,
                                                                              "result.json"))))
            continue
        if status == "failed":
            study_dir_lib.set_aside(path)
        todo.append(run)
    return done, todo


def _write_json(path, payload):
    """Standard JSON (non-finite: null), written atomically: a crash leaves the old file whole."""
    run_dir_lib.write_json(os.path.dirname(path), os.path.basename(path), payload)


def _columns(columns):
    if not columns:
        return tables.DEFAULT_COLUMNS
    return tuple(tuple(c) for c in columns)
