"""Launching a study: check everything, then run this shard's unfinished runs, then report.

Order matters: the grid is expanded, every point parsed and checked, the target metric, the shard
and an existing study directory are checked, all before anything is written; only then is
study.json written and do runs start. A relaunch with the same ``--run_name`` skips finished runs
and moves unfinished ones aside (``<run>.attempt-K``) before running them again. With
``study.extend_learning_rates`` the launch then adds learning rates beyond the grid's edge where
the best one sits there (``study_extension``), recorded in study.json so a relaunch rebuilds them.
"""

import difflib
import os
import time

import gin

from experiments.launch import executor, worker
from experiments.launch import grid as grid_lib
from experiments.launch import points, precedence
from experiments.launch import study_dir as study_dir_lib
from experiments.launch import study_extension, study_reporting
from experiments.launch.gin_config import ConfigError, query
from experiments.run import run_dir as run_dir_lib


def grid_context(spec):
    """What ``grid.expand`` needs from the parsed base experiment."""
    optimizer = query("train.optimizer")
    if not isinstance(optimizer, gin.config.ConfigurableReference):
        raise ConfigError("A study binds the learning rate of the configurable that "
                          f"train.optimizer refers to, but train.optimizer is {optimizer!r}: "
                          "write train.optimizer = @keras.optimizers.SGD (or another).")
    selector = optimizer.configurable.selector
    base_lr = query(f"{selector}.learning_rate")
    num_train = None
    if spec.update_budget is not None:
        num_train = _num_train_examples()
    return grid_lib.GridContext(
        lr_selector=selector,
        base_learning_rate=float(base_lr) if isinstance(base_lr, (int, float)) else None,
        base_epochs=query("train.epochs", 1), num_train_examples=num_train,
        base_micro_batch_size=query("train.micro_batch_size"), base_seed=query("train.seed", 0))


def _num_train_examples():
    """Training rows of the base's data, for ``study.update_budget``."""
    data_fn = query("train.data_fn")
    data = data_fn.scoped_configurable_fn() if isinstance(
        data_fn, gin.config.ConfigurableReference) else data_fn()
    if not getattr(data, "num_train", None):
        raise ConfigError("study.update_budget needs a data source with a known number of "
                          "training rows; set study.epochs instead.")
    return int(data.num_train)


def logged_metrics():
    """The validation-curve names a run logs (``val_loss``, ``val_<metric>``), or None when a
    metric's name cannot be known before training."""
    names = ["loss"]
    for metric in query("train.metrics", ("accuracy",)) or ():
        if isinstance(metric, str):
            names.append(metric)
            continue
        try:
            built = metric.scoped_configurable_fn() if isinstance(
                metric, gin.config.ConfigurableReference) else metric
            names.append(built.name)
        except Exception:  # noqa: BLE001  (an unknown name only disables this check)
            return None
    return ["val_" + name for name in names]


def check_target_metric(spec, binding="study.target_metric"):
    """The target metric (``spec.target_metric``, bound as ``binding``) must be on every run's
    validation curve."""
    logged = logged_metrics()
    if logged is None or spec.target_metric in logged:
        return
    close = difflib.get_close_matches(spec.target_metric, logged, n=1, cutoff=0.5)
    hint = f" Did you mean: {close[0]}?" if close else ""
    raise ConfigError(f"{binding} = {spec.target_metric!r} is not logged by the runs "
                      f"(their validation curves hold {', '.join(logged)}).{hint}")


def study_directory(output_dir, study_name, run_name):
    """``<output_dir>/<study>/<run_name>`` (a relaunch reuses it); without a run name a new
    timestamped directory, created atomically."""
    if run_name:
        run_dir_lib.check_parent(os.path.join(output_dir, study_name))
        return os.path.join(output_dir, study_name, run_name)
    return run_dir_lib.new_directory(os.path.join(output_dir, study_name))


def prepare(spec, study_name, gin_files, gin_bindings, output_dir, shard, run_name):
    """Everything checked, nothing written: (study dir, state, all runs, this shard's runs)."""
    return _prepare(spec, study_name, gin_files, gin_bindings, output_dir, shard, run_name)[:4]


def _prepare(spec, study_name, gin_files, gin_bindings, output_dir, shard, run_name):
    """``prepare``, plus the grid context and the shard count (the extension needs both). The
    runs are the grid's, then those of the learning rates an earlier launch added beyond its
    edge (study.json's ``extensions``, ``study_extension``), so a relaunch rebuilds them."""
    context = grid_context(spec)
    try:
        runs = grid_lib.expand(spec, context)
    except ValueError as error:  # two points that name the same run
        raise ConfigError(str(error)) from None
    if not runs:
        raise ConfigError(
            "The study's grid is empty: every micro-batch size of study.micro_batch_sizes "
            f"({list(spec.micro_batch_sizes)}) is larger than every batch size of "
            f"study.batch_sizes ({list(spec.batch_sizes)}), and b > B is no split.")
    # a named study may hold rates an earlier launch added (a new directory holds none)
    stored = study_dir_lib.load(study_directory(output_dir, study_name, run_name)) \
        if run_name else None
    extensions = [dict(e) for e in (stored or {}).get("extensions") or ()]
    runs += study_extension.runs_of(spec, context, extensions, len(runs),
                                    {r.name for r in runs})
    runs = precedence.with_command_line_last(runs, gin_bindings, "study run", study=True)
    check_target_metric(spec)
    try:
        index, count = grid_lib.parse_shard(shard)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    points.check_all(gin_files, gin_bindings, runs, "study run")
    path = study_directory(output_dir, study_name, run_name)
    fresh = study_dir_lib.new_state(study_name, gin_files, gin_bindings, spec, runs,
                                    gin.config_str())
    if extensions:
        fresh["extensions"] = extensions
    if stored is None and run_name:  # another shard may have written it since (a race)
        stored = study_dir_lib.load(path)
    if stored is None and os.path.isdir(path) and any(
            not name.startswith(".") for name in os.listdir(path)):  # (a shard's tmp file)
        raise ConfigError(f"{path} exists and holds no study (a run or a sweep?); use another "
                          "--run_name.")
    if stored is not None:
        changed = study_dir_lib.differences(stored, fresh["axes"])
        if changed:
            raise ConfigError(f"{path} holds a different study (--run_name={run_name}); "
                              "use another --run_name. Differences (stored -> now): "
                              + "; ".join(changed))
        diff = run_dir_lib.config_difference(stored["config"], fresh["config"]) \
            if stored.get("config") is not None else None
        if diff:  # a shard or relaunch with other base bindings would mix two studies
            raise ConfigError(
                f"{path} holds a study launched with another configuration "
                f"(--run_name={run_name}); every shard and relaunch needs the same gin files "
                "and bindings (those that do not change results may differ), or use another "
                "--run_name. The difference:\n" + "\n".join(diff))
        old = {run["name"]: run for run in stored["runs"]}
        for new in fresh["runs"]:  # keep errors of earlier attempts
            if new["name"] in old:
                new.update(status=old[new["name"]].get("status"),
                           error=old[new["name"]].get("error"))
    return path, fresh, runs, grid_lib.shard(runs, index, count), context, count


def _todo(path, mine):
    """(runs to train, runs live elsewhere) of ``mine``: failed ones are set aside to start
    afresh, interrupted ones resume where they stopped, finished and live ones are left alone."""
    statuses = {r.name: study_dir_lib.run_status(os.path.join(path, r.name))[0] for r in mine}
    todo = [r for r in mine if statuses[r.name] not in ("finished", "running")]
    for run in todo:
        if statuses[run.name] == "failed":
            study_dir_lib.set_aside(os.path.join(path, run.name))
    return todo, [r for r in mine if statuses[r.name] == "running"]


POLL_SECONDS = 10.0  # how often a launch looks at the runs it waits for


def _wait_for_live(path, live, print_fn):
    """The runs of ``live`` (this launch's runs that another process held) that turn out
    interrupted: waited for until each is finished, failed or interrupted (its process gone, or
    its heartbeat stale), so that they are resumed here. A relaunched shard found its own run
    still "running" where the killed process's last heartbeat was young (a requeue on another
    host within the heartbeat's staleness) and exited 0 with that run never trained. A run
    whose status this very process holds (its slot here ended without recording the run's end,
    e.g. on a full disk) is not waited for: nothing else will end it."""
    statuses = {run.name: run_dir_lib.read_status(os.path.join(path, run.name)) for run in live}
    waiting = {run.name: run for run in live
               if not run_dir_lib.held_by_this_process(statuses[run.name])}
    resumable = []
    if waiting:
        longest = max(run_dir_lib.stale_after(statuses[name]) for name in waiting)
        print_fn(f"Waiting for {len(waiting)} run(s) live in another launch: "
                 f"{', '.join(sorted(waiting))} (a run whose process is gone is resumed here "
                 f"once its heartbeat is stale, at most {longest:.0f} s after its last one).")
    while waiting:
        for name in sorted(waiting):
            status = study_dir_lib.run_status(os.path.join(path, name))[0]
            if status == "running":
                continue
            run = waiting.pop(name)
            if status == "interrupted":
                resumable.append(run)
        if waiting:
            time.sleep(POLL_SECONDS)
    return resumable


def launch_study(spec, study_name, gin_files, gin_bindings, output_dir, jobs=1, shard=None,
                 run_name=None, print_fn=print):
    """Runs the study's unfinished runs of this shard, then (``study.extend_learning_rates``)
    the learning rates beyond the grid's edge where the best one sits there, round after round;
    then writes study.json and the report. Returns {"study_dir", "outcomes", "report"}."""
    path, state, runs, mine, context, count = _prepare(
        spec, study_name, gin_files, gin_bindings, output_dir, shard, run_name)
    todo, live_runs = _todo(path, mine)
    live = len(live_runs)
    state["extension_settings"] = study_extension.settings(spec)
    study_dir_lib.write(path, study_dir_lib.refresh(path, state))
    print_fn(f"Study {study_name}: {len(runs)} runs, this shard {len(mine)}, "
             f"{len(mine) - len(todo) - live} already finished, {live} running elsewhere, "
             f"{len(todo)} to run ({jobs} at once) in {path}")

    def run_in_process(job):
        return worker.train_here(gin_files, list(gin_bindings) + list(job.spec.bindings),
                                   job.run_dir)

    all_outcomes, errors, resumed = [], {}, set()
    while True:
        jobs_list = [executor.Job(run, os.path.join(path, run.name)) for run in todo]
        outcomes = executor.execute(jobs_list, run_in_process, gin_files, gin_bindings, jobs,
                                    print_fn)
        all_outcomes += outcomes
        errors.update({o.name: o.error for o in outcomes if o.status == "failed"})
        study_dir_lib.write(path, study_dir_lib.refresh(path, state, errors))
        # this launch's runs another process held (at the start, or taken meanwhile): this
        # launch ends when they have ended, and resumes those whose process is gone
        live_runs += [job.spec for job, outcome in zip(jobs_list, outcomes)
                      if outcome.status == "running"]
        # each resumed once per launch: a run that comes back held again is left to a relaunch
        todo = [run for run in _wait_for_live(path, live_runs, print_fn)
                if run.name not in resumed]
        live_runs = []
        if todo:
            names = {run.name for run in todo}
            resumed |= names
            all_outcomes = [o for o in all_outcomes if o.name not in names]
            continue
        study_dir_lib.write(path, study_dir_lib.refresh(path, state, errors))
        if not spec.extend_learning_rates:
            break
        held = "shard" if count > 1 else "running" if any(
            run["status"] == "running" for run in state["runs"]) else None
        if held is not None:  # recorded, so that the report (also --report) says what to do
            print_fn("study.extend_learning_rates: " + (
                "not with --shard (each shard would extend on its own); once every shard is "
                "done, relaunch without --shard to extend." if held == "shard" else
                "runs of this study are still running in another launch; relaunch once they "
                "are done to extend."))
            state["extension_settings"]["held"] = held
            study_dir_lib.write(path, state)
            break
        todo = _extend(spec, context, state, path, gin_files, gin_bindings, print_fn)
        if not todo:
            break
    report = study_reporting.write(path, state)
    executor.wait_for_workers()
    _print_report(report, path, print_fn)
    return {"study_dir": path, "outcomes": all_outcomes, "report": report}


def _extend(spec, context, state, path, gin_files, gin_bindings, print_fn):
    """One extension round: the runs of the rates ``study_extension.plan`` adds beyond the
    grid's edge, recorded in study.json before they start (a relaunch rebuilds them); [] when
    none is added (the stops recorded for the report)."""
    summary = study_reporting.summary(path, state)
    new, stops = study_extension.plan(summary, state, spec.max_extensions)
    state["extension_settings"] = study_extension.settings(spec, stops)
    if not new:
        study_dir_lib.write(path, state)
        return []
    runs = study_extension.runs_of(spec, context, new, len(state["runs"]),
                                   {r["name"] for r in state["runs"]})
    runs = precedence.with_command_line_last(runs, gin_bindings, "study run",
                                             print_fn=lambda *_: None)
    points.check_all(gin_files, gin_bindings, runs, "study run")
    study_extension.record(state, new, runs)
    study_dir_lib.write(path, state)
    print_fn("Learning rates beyond the grid's edge (study.extend_learning_rates): " + "; ".join(
        f"B = {e['batch_size']}: {e['learning_rate']:g} ({e['edge']} edge, best was "
        f"{e['from']:g}, extension {e['round']} of {spec.max_extensions})" for e in new)
        + f"; {len(runs)} run(s).")
    return runs


def _print_report(report, path, print_fn):
    from experiments.analysis.study_report import sentences
    print_fn("\n" + "\n".join(f"- {s}" for s in sentences(report["summary"])))
    print_fn(f"\nReport: {report['report']}   (tensorboard --logdir {path})")
