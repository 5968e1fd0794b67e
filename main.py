"""batchlab: train a Keras model, a sweep or a batch-size study from gin files.

    batchlab [--gin_file=F]... [--gin_bindings=B]... [--output_dir=D]
             [--jobs=N] [--shard=i/n] [--run_name=NAME]
    batchlab --resume=RUN_DIR | --report=STUDY_DIR | --list=DIR

(``python main.py`` in the repository takes the same flags.) Files and bindings compose in
order, command-line bindings last; with no flags it runs gin/quickstart.gin. A gin file with
``sweep.variants`` runs a sweep, one with ``study.*`` a batch-size study (docs/studies.md).
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_multi_string("gin_file", [], "Gin files, parsed in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, parsed after the files.")
flags.DEFINE_string("output_dir", "runs", "Parent of the run directories.")
flags.DEFINE_integer("jobs", 1, "Runs of a sweep or study trained at once, each in its own "
                     "process (1: one after the other in this process).")
flags.DEFINE_string("shard", None, "i/n: run only the study runs whose index % n == i.")
flags.DEFINE_string("run_name", None, "Name of the sweep or study directory (default: a "
                    "timestamp); relaunching a study with the same name skips its finished runs.")
flags.DEFINE_string("resume", None, "Resume this run directory from its own config.gin and "
                    "newest checkpoint (no gin file or binding needed).")
flags.DEFINE_string("report", None, "Rebuild the report of this study directory, or the "
                    "comparison of this comparison sweep's directory (no training).")
flags.DEFINE_string("list", None, "List the runs, sweeps and studies under this directory: "
                    "status, key metrics and where they are (no training).")
# What --jobs starts its processes with, not for users: declared under their own module name, so
# that --help lists the user flags only (--helpfull lists these too).
INTERNAL = "batchlab.internal"
flags.DEFINE_string("run_dir", None, "Internal: train exactly one run into this new directory "
                    "(what --jobs child processes run).", module_name=INTERNAL)
flags.DEFINE_bool("worker", False, "Internal: train the runs sent as JSON lines on stdin (what "
                  "--jobs starts).", module_name=INTERNAL)
flags.DEFINE_integer("intra_op_threads", 0, "Internal: TensorFlow CPU threads (0: default).",
                     module_name=INTERNAL)
FLAGS = flags.FLAGS
LAUNCHER_PID = "BATCHLAB_LAUNCHER_PID"  # set by a launcher for the workers it starts


def _launches_workers():
    """True when this process launches a sweep or study with --jobs=N > 1: once the
    configuration parsed it starts its N - 1 workers (a bad flag or binding starts none) and
    trains runs itself on the N-th slot, with its share of the CPU threads."""
    internal = FLAGS.worker or FLAGS.run_dir or FLAGS.report or FLAGS.resume or FLAGS.list
    return FLAGS.jobs > 1 and not internal


def _announce():
    """The launch's first line, printed before TensorFlow loads (which takes seconds)."""
    internal = FLAGS.worker or FLAGS.run_dir or FLAGS.report or FLAGS.list
    if internal:
        return
    what = f"--resume={FLAGS.resume}" if FLAGS.resume else \
        " ".join(FLAGS.gin_file) or "gin/quickstart.gin"
    print(f"batchlab: {what}: loading TensorFlow, then checking the configuration.", flush=True)


def _limit_threads(threads):
    if threads > 0:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _dispatch(launch):
    if FLAGS.resume:
        from experiments.launch import resume  # (with no gin flags: checked in main)
        resume.resume(FLAGS.resume)
        return
    if FLAGS.report:
        from experiments.launch import study_reporting
        print(study_reporting.rebuild(FLAGS.report))  # a study's, or a comparison sweep's
        return
    if FLAGS.run_dir or FLAGS.worker:
        from experiments.launch import worker
        files = FLAGS.gin_file or [launch.QUICKSTART]
        if FLAGS.worker:
            worker.serve(files, FLAGS.gin_bindings)
        else:
            worker.train_here(files, FLAGS.gin_bindings, FLAGS.run_dir)
        return
    results = launch.launch(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.output_dir,
                            jobs=FLAGS.jobs, shard=FLAGS.shard, run_name=FLAGS.run_name)
    failed = [r["run"] for r in results if r.get("status") == "failed"] \
        if isinstance(results, list) else \
        [o.name for o in results["outcomes"] if o.status == "failed"]
    if failed:
        sys.exit(f"batchlab: {len(failed)} run(s) failed: {', '.join(failed)}")


def _message(error):
    """The error's own message, without the call chain gin appends to it."""
    from experiments.common.errors import own_message  # noqa: PLC0415
    return own_message(error)


class _Stopped(KeyboardInterrupt):
    """A stop signal reached the launch outside a run (which saves and stops by itself)."""

    def __init__(self, signum):
        super().__init__(f"signal {signum}")
        self.signum = int(signum)


def _resume_hint(run_name, resume, run_dir):
    """How to continue an interrupted run: the same command finds a named run (or the directory
    it was given) again; an unnamed one would start afresh in a new timestamped directory."""
    if run_name or resume or run_dir:
        return "relaunch the same command to resume"
    return ("resume a single run with --resume=RUN_DIR (its run directory, logged at its start "
            "and listed by --list), and a sweep or study by relaunching the same command with "
            "--run_name=<the name of its directory, a timestamp> (relaunching it without one "
            "would start anew)")


# --list, --report and --resume each do one thing with one directory: a launch's flags beside
# them were ignored (--report=X --resume=Y trained Y and wrote no report).
_ONE_DIRECTORY_MODES = ("list", "report", "resume")
_LAUNCH_FLAGS = ("gin_file", "gin_bindings", "output_dir", "run_name", "shard", "jobs")


def _check_flag_combination():
    """Exits with one line naming the flags when they cannot go together, before anything
    starts."""
    modes = [name for name in _ONE_DIRECTORY_MODES if FLAGS[name].present]
    if len(modes) > 1:
        sys.exit(f"batchlab: configuration error: --{modes[0]} and --{modes[1]} cannot go "
                 "together: give one of them; nothing was started.")
    if modes:
        extra = [name for name in _LAUNCH_FLAGS if FLAGS[name].present
                 and not (modes[0] == "resume" and name.startswith("gin_"))]  # (its own line)
        if extra:
            what = ("takes the run's own config.gin" if modes[0] == "resume" else
                    "only reads what is on disk")
            sys.exit(f"batchlab: configuration error: --{modes[0]} {what}; --{extra[0]} does "
                     "not apply to it (give it alone); nothing was started.")
    if FLAGS.run_name is not None:
        from experiments.run import run_dir  # imports no TensorFlow
        try:
            run_dir.check_user_run_name(FLAGS.run_name)
        except ValueError as error:
            sys.exit(f"batchlab: configuration error: {error}")
    if FLAGS.intra_op_threads < 0:
        sys.exit("batchlab: configuration error: --intra_op_threads must be 0 (TensorFlow's "
                 f"default) or positive, got {FLAGS.intra_op_threads}.")


def _stop(signum, frame):
    raise _Stopped(signum)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for flag in ("list", "report", "resume", "run_dir", "output_dir", "shard"):
        if FLAGS[flag].present and not str(FLAGS[flag].value or "").strip():  # $UNSET_VARIABLE
            wanted = "i/n" if flag == "shard" else "a directory"
            sys.exit(f"batchlab: configuration error: --{flag} needs {wanted}, got an empty "
                     "value (an unset shell variable?); nothing was started.")
    _check_flag_combination()
    threads = FLAGS.intra_op_threads
    if (FLAGS.worker or FLAGS.run_dir) and LAUNCHER_PID in os.environ:
        from experiments.launch import lifeline  # imports no TensorFlow
        lifeline.die_with_parent(int(os.environ[LAUNCHER_PID]))  # ends with its launcher
    elif not FLAGS.worker:  # a launch: SIGTERM ends it as Ctrl-C does (exit 143, runs saved)
        signal.signal(signal.SIGTERM, _stop)
    if FLAGS.list:
        from experiments.launch import listing  # imports no TensorFlow
        try:
            print(listing.format_listing(FLAGS.list))
        except (FileNotFoundError, NotADirectoryError) as error:
            sys.exit(f"batchlab: error: {error}")
        return
    if FLAGS.jobs < 1:
        sys.exit(f"batchlab: configuration error: --jobs must be a positive integer, got "
                 f"{FLAGS.jobs}.")
    if FLAGS.resume and (FLAGS.gin_file or FLAGS.gin_bindings):  # before TensorFlow loads
        sys.exit("batchlab: configuration error: --resume takes the run's own config.gin; give "
                 "no --gin_file or --gin_bindings with it.")
    _announce()
    if _launches_workers():
        from experiments.launch import spares  # imports no TensorFlow
        threads = threads or spares.threads_per_job(FLAGS.jobs)
        for name, value in spares.thread_env(threads).items():  # as the workers have it
            os.environ[name] = value
    try:  # a stop signal while TensorFlow loads: nothing has started, nothing to save
        _limit_threads(threads)
        from experiments import launch  # after flags: importing TensorFlow is slow
        from experiments.launch import executor, spares
        from callbacks.checkpointing import StoppedAfterFinish, TrainingInterrupted
    except KeyboardInterrupt as stopped:
        print("batchlab: stopped while starting; nothing was written.", file=sys.stderr)
        sys.exit(128 + getattr(stopped, "signum", signal.SIGINT))

    try:
        _dispatch(launch)
    except launch.ConfigError as error:
        if os.environ.get("BATCHLAB_TRACEBACK"):
            raise
        sys.exit(f"batchlab: configuration error: {_message(error)}")
    except TrainingInterrupted as stopped:  # SIGTERM / SIGINT: checkpoint saved, resumable
        # (after a run's last update the run itself is finished: only a sweep or study has
        # something left to resume)
        hint = ("a sweep or study goes on when relaunched with the same command and --run_name"
                if isinstance(stopped, StoppedAfterFinish)
                else _resume_hint(FLAGS.run_name, FLAGS.resume, FLAGS.run_dir))
        print(f"batchlab: {_message(stopped)}; {hint}.", file=sys.stderr)
        sys.exit(128 + int(stopped.reason))
    except KeyboardInterrupt as stopped:  # --jobs: workers stopped, their runs 'interrupted'
        print("batchlab: stopped; relaunch with the same --run_name to run what is left.",
              file=sys.stderr)
        sys.exit(128 + getattr(stopped, "signum", signal.SIGINT))  # 143 for SIGTERM, as a run
    except Exception as error:  # noqa: BLE001  (a user's error as a message; a bug as it is)
        from experiments.common.errors import user_message  # noqa: PLC0415
        from experiments.launch.gin_config import call_error  # noqa: PLC0415
        configuration = call_error(error)  # gin called a configurable with wrong arguments
        if configuration is not None and not os.environ.get("BATCHLAB_TRACEBACK"):
            sys.exit(f"batchlab: configuration error: {configuration}")
        message = user_message(error)
        if message is None or os.environ.get("BATCHLAB_TRACEBACK"):
            raise
        sys.exit(f"batchlab: error: {message}")
    finally:
        spares.release()  # workers started for --jobs that no sweep or study took
        executor.wait_for_workers()  # the workers' exit, overlapped with the report


def _main_then_leave(argv):
    """``main``, then the process ends at once with its status. Once a launch is done everything
    it wrote is flushed and closed, but the interpreter's clean-up destroys the data iterators of
    its runs, and TensorFlow's tf.data thread pools can wait minutes there (seen after a study's
    report was written): skipping that clean-up changes nothing a user keeps."""
    try:
        main(argv)
        status = 0
    except SystemExit as done:
        status = done.code
    if isinstance(status, str):  # sys.exit("message"): printed, status 1, as Python does
        print(status, file=sys.stderr)
        status = 1
    status = 0 if status is None else int(status)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    app.run(_main_then_leave)
