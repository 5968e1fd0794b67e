"""The run directory: honest about its state, never overwritten, resumable.

Layout::

    <output_dir>/<experiment>/<run_name or timestamp[-N]>/
        config.gin            every parsed binding, written before training
        operative_config.gin  the values actually used, written after the first graph call of
                              updates (or when the run fails)
        status.json           'running' (pid, host, start, heartbeat), then 'finished', 'failed'
                              (with the error) or 'interrupted' (stopped by a signal, resumable)
        result.json           only for a finished run
        tensorboard/          train/ and validation/ event files
        checkpoints/          state-<update>.npz (the last few) and final.weights.h5

A run without a name gets a fresh timestamped directory. A named run (``--run_name``) reuses its
directory: ``open_named`` resumes an unfinished run of the same configuration, refuses a finished
one, one that is still running, and one of another configuration (with the difference).
"""

import contextlib
import datetime
import difflib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
import zipfile

from experiments.common import errors, json_files

# A 'running' status whose heartbeat is older than this is taken as a dead run (longer for a run
# that beats less often: ``stale_after``).
STALE_AFTER_SECONDS = 120.0
# Heartbeats a run may miss before another host takes it as dead, and a margin beside them: a beat
# is written at an update or epoch end, so it comes late by up to an update or a validation.
STALE_AFTER_BEATS, STALE_MARGIN_SECONDS = 3, 30.0

# This process's own mark in the 'running' statuses it writes: a status holding this process's
# pid but not this mark was written by another process that had the same pid (a container
# restarted in a fresh PID namespace gets pid 1 again), which is dead.
_PROCESS_TOKEN = uuid.uuid4().hex

# A checkpoint file, ``checkpoints/state-<update>.npz`` (as ``run/checkpoints.py`` names them;
# that module imports TensorFlow, which a reader of run directories must not).
_CHECKPOINT = re.compile(r"^state-(\d+)\.npz$")

# An error's own "Type: message" line (``errors.summary`` writes one; a traceback ends with one).
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt\w*|Finish\w*|Exit)\b.*:")


def check_output_dir(output_dir):
    """Raises a clear error, before anything is loaded or written, when ``output_dir`` cannot hold
    run directories: it is a file, lies under a file, or is not writable."""
    path = os.path.abspath(output_dir)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = "is a file" if probe == path else f"lies under the file {probe}"
        raise ValueError(f"--output_dir={output_dir!r} {where}; give a directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--output_dir={output_dir!r}: {probe} is not writable.")
    try:  # what access() cannot tell (root on sysfs, procfs, a read-only mount): try it,
        os.rmdir(tempfile.mkdtemp(prefix=".batchlab-probe-", dir=probe))  # leaving nothing
    except OSError as error:
        raise ValueError(f"--output_dir={output_dir!r}: cannot write there "
                         f"({error.strerror or error}); give a writable directory.") from None
    return path


def new_directory(parent, name=None):
    """Creates and returns ``<parent>/<name or a timestamp>``, or with a ``-N`` suffix when that
    exists: created atomically (``os.makedirs(exist_ok=False)``), so two launches in the same
    second never share a directory. Runs, sweeps and studies all get theirs here."""
    check_parent(parent)
    base = os.path.join(parent, check_run_name(name)
                        or datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    path, suffix = base, 1
    while True:
        try:
            os.makedirs(path, exist_ok=False)
            return path
        except FileExistsError:
            path, suffix = f"{base}-{suffix}", suffix + 1


def check_parent(parent):
    """A clear error when ``parent`` (``<output_dir>/<experiment>``) exists and is not a
    directory (it failed as a bare "Not a directory")."""
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{parent} is a file, not a directory: runs of this experiment go "
                         "there. Move the file, or give another --output_dir.")


def create(output_dir, experiment, name=None):
    """Creates and returns a new run directory; an existing one is never touched."""
    path = new_directory(os.path.join(output_dir, experiment), name)
    write_json(path, "status.json", running_status())
    return path


def running_status(started=None, heartbeat_seconds=None):
    """The status of a live run: who runs it (with this process's token, ``is_alive``), since
    when, and a heartbeat (now); ``heartbeat_seconds``, the interval of its heartbeats, tells a
    reader on another host how old a live run's heartbeat may be (``stale_after``)."""
    now = time.time()
    status = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
              "process": _PROCESS_TOKEN, "started": started or now, "heartbeat": now}
    if heartbeat_seconds is not None:
        status["heartbeat_seconds"] = float(heartbeat_seconds)
    return status


def read_status(run_dir):
    try:
        with open(os.path.join(run_dir, "status.json")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def is_alive(status, now=None):
    """Whether a 'running' status belongs to a live process. On this host the process decides:
    it exists (and started no later than the run did: not a reused pid) or not, whatever the
    heartbeat says (a long validation or a slow call writes no heartbeat for minutes, and a
    relaunch must not train the same run beside it). A status holding this process's own pid
    that this process did not write is dead: no other process can hold that pid now (a
    container restarted in a fresh PID namespace runs as pid 1 again, beside its dead run's pid
    1). On another host, a heartbeat younger than ``stale_after``. A run killed without a word
    (SIGKILL, lost machine) is not alive."""
    if status.get("status") != "running":
        return False
    if status.get("host") == socket.gethostname() and status.get("pid"):
        pid = int(status["pid"])
        if pid == os.getpid() and status.get("process") != _PROCESS_TOKEN:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = _process_start_time(pid)
        return started is None or started <= float(status.get("started", started)) + 60.0
    now = time.time() if now is None else now
    return now - float(status.get("heartbeat", 0.0)) <= stale_after(status)


def held_by_this_process(status):
    """Whether a 'running' status was written by this very process (its slot ended without
    recording the run's end): no other process can end it, so no launch should wait for it."""
    return (status.get("status") == "running" and status.get("host") == socket.gethostname()
            and status.get("pid") == os.getpid() and status.get("process") == _PROCESS_TOKEN)


def stale_after(status):
    """Seconds after its last heartbeat that a 'running' status on another host is taken as
    dead: ``STALE_AFTER_SECONDS``, or ``STALE_AFTER_BEATS`` of its heartbeat intervals and a
    margin when longer (a run with ``checkpoints.heartbeat_seconds = 600`` read as dead after
    two minutes, and a relaunch could train it twice). A status without its interval (written
    before the run's first beat, or by an older batchlab) keeps the fixed rule."""
    try:
        interval = float(status.get("heartbeat_seconds") or 0.0)
    except (TypeError, ValueError):
        interval = 0.0
    return max(STALE_AFTER_SECONDS, STALE_AFTER_BEATS * interval + STALE_MARGIN_SECONDS)


def _process_start_time(pid):
    """When process ``pid`` started (seconds since the epoch), from Linux' /proc; None where that
    cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime"))
        return boot + float(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def effective_status(run_dir):
    """'finished', 'failed', 'interrupted', 'running' or 'missing'; a 'running' run whose process
    is gone or whose heartbeat is stale reads as 'interrupted'. A damaged status.json (not JSON:
    a machine that crashed while writing it) in a directory batchlab made (it has config.gin)
    reads as what the rest says: 'finished' with a readable result.json, else 'interrupted', so
    a relaunch resumes from its checkpoints instead of refusing the run as not batchlab's."""
    status = read_status(run_dir)
    state = status.get("status", "missing")
    if state == "missing" and _damaged_status(run_dir):
        result = json_files.read_json(os.path.join(run_dir, "result.json"))
        return "finished" if isinstance(result, dict) else "interrupted"
    if state == "running" and not is_alive(status):
        return "interrupted"
    return state


def newest_checkpoint_update(run_dir):
    """The update of the newest checkpoint a resumed run would start from
    (``<run_dir>/checkpoints/state-<update>.npz``), or None where there is none. Read without
    TensorFlow, for ``--list``: a file that is not a whole zip archive (cut short by a kill) is
    passed over, as the resume passes over an unreadable one; the arrays are not read."""
    directory = os.path.join(run_dir, "checkpoints")
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    found = sorted(((int(m.group(1)), m.group(0)) for m in map(_CHECKPOINT.match, names) if m),
                   reverse=True)
    for update, name in found:
        try:
            with zipfile.ZipFile(os.path.join(directory, name)) as archive:
                if "__meta__.npy" in archive.namelist():
                    return update
        except (OSError, zipfile.BadZipFile):
            continue
    return None


def error_line(text):
    """The line of an error text (a status's error, a log's traceback) that says what it was:
    its last "Type: message" line (a traceback ends with it; a summary leads with it and may go
    on with its message's other lines, which alone say little), else its last line; "" for
    none."""
    lines = [line for line in str(text or "").strip().splitlines() if line.strip()]
    named = [line for line in lines if ERROR_LINE.match(line)]
    return (named[-1] if named else lines[-1]).strip() if lines else ""


def _damaged_status(run_dir):
    """status.json is there but unreadable, in a run directory batchlab made."""
    path = os.path.join(run_dir, "status.json")
    return (os.path.exists(path) and os.path.exists(os.path.join(run_dir, "config.gin"))
            and not isinstance(json_files.read_json(path), dict))


class RunExistsError(ValueError):
    """A named run directory cannot be used for this launch (finished, live, or different);
    ``state`` is the run's ('running' when another process trains it)."""

    def __init__(self, message, state=None):
        super().__init__(message)
        self.state = state


MAX_RUN_NAME_BYTES = 200  # 255 for a directory name, less ".<name>.claim-XXXXXXXX" and ".lock"


def check_run_name(name):
    """``name`` if it is one directory name (a run, sweep or study name: no ``/``, not ``.`` or
    ``..``, not empty); a ValueError naming ``--run_name`` otherwise, so that nothing is written
    outside ``<output_dir>/<experiment>``."""
    if name is None:
        return None
    bad = (not isinstance(name, str) or not name.strip() or name in (".", "..")
           or "/" in name or "\\" in name or "\0" in name)
    if bad:
        raise ValueError(f"--run_name must be a single directory name (no '/', not '..'), got "
                         f"{name!r}.")
    return name


def check_user_run_name(name):
    """``check_run_name`` for the user's ``--run_name``, and its length: a name the file system
    cannot hold failed only once TensorFlow and the data had loaded ([Errno 36], an empty
    experiment directory left). (A sweep variant's own directory name is not capped here.)"""
    check_run_name(name)
    if name is not None and len(name.encode("utf-8")) > MAX_RUN_NAME_BYTES:
        raise ValueError(f"--run_name is {len(name.encode('utf-8'))} bytes long; at most "
                         f"{MAX_RUN_NAME_BYTES} (a directory name holds 255, and the claim "
                         "of a run directory adds a suffix).")
    return name


def claim(path):
    """Creates the run directory ``path``, already holding this process's 'running' status, in one
    atomic step: it is filled under a temporary name beside it and renamed into place, which
    fails when ``path`` exists. Returns whether this process made it (two launches of one name:
    exactly one does)."""
    parent = os.path.dirname(path)
    check_parent(parent)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.claim-", dir=parent)
    try:
        write_json(staging, "status.json", running_status())
        os.rename(staging, path)
        return True
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on the run directory ``path`` (``fcntl.flock`` on ``path/.lock``): one
    process at a time decides whether to resume it and marks it running."""
    with open(os.path.join(path, ".lock"), "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_named(output_dir, experiment, name, config_text):
    """(path, resuming) of the named run ``<output_dir>/<experiment>/<name>``: a new directory
    (claimed atomically), or an unfinished run of the same configuration to resume. Raises
    ``RunExistsError`` otherwise, saying who holds a running one."""
    path = os.path.join(output_dir, experiment, check_run_name(name))
    if claim(path):
        return path, False
    with _locked(path):
        state = effective_status(path)
        if state == "finished":
            raise RunExistsError(f"The run {path} is finished; it is never overwritten. Choose "
                                 "another --run_name to train again.")
        if state == "running":
            status = read_status(path)
            raise RunExistsError(f"The run {path} is running (pid {status.get('pid')} on "
                                 f"{status.get('host')}); wait for it or stop it first.",
                                 state="running")
        if state == "missing":
            raise RunExistsError(f"The run directory {path} exists but holds no run status; it "
                                 "was not made by batchlab. Choose another --run_name.")
        check_same_config(path, config_text)
        # The status it resumes from travels in the running one: a refusal before training
        # (changed data) puts it back (``put_back_status``), with its reason and update.
        write_json(path, "status.json", dict(running_status(), resumes=read_status(path)))
    return path, True


def put_back_status(path):
    """Writes back the status a resumed run found (``open_named``), when this process refuses to
    train it after all: the run stays as it was (interrupted at its update, or failed)."""
    previous = read_status(path).get("resumes")
    if previous:
        write_json(path, "status.json", previous)


# Bindings that change no run's results, so a relaunch or a shard may differ in them: how a run
# is watched or saved (a resumed run with other checkpoint cadences or verbosity ends with the
# same results), and the study's extension switch and limit, which only add runs
# (docs/studies.md: "turning the switch on ... on a relaunch of a finished study only adds runs").
RESULT_NEUTRAL = ("checkpoints.", "train.verbose", "study.extend_learning_rates",
                  "study.max_extensions")


def result_bindings(config_text):
    """The bindings of a ``gin.config_str()`` text that decide a run's results, one string each
    (a multi-line value with its continuation lines), comments and ``RESULT_NEUTRAL`` ones left
    out."""
    blocks = []
    for line in config_text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and blocks:
            blocks[-1] += "\n" + line
        else:
            blocks.append(line)
    return [b for b in blocks if not b.split("=")[0].strip().startswith(RESULT_NEUTRAL)]


def config_difference(saved_text, config_text, saved_label="stored"):
    """The unified diff (lines) of two ``gin.config_str()`` texts when they differ in a binding
    that decides results (``result_bindings``), else None."""
    if result_bindings(saved_text) == result_bindings(config_text):
        return None
    return list(difflib.unified_diff(saved_text.splitlines(), config_text.splitlines(),
                                     saved_label, "now", lineterm="", n=0))


def check_same_config(run_dir, config_text):
    """Raises ``RunExistsError`` with the difference when ``run_dir`` was configured otherwise
    (bindings that do not change results, ``RESULT_NEUTRAL``, may differ)."""
    try:
        with open(os.path.join(run_dir, "config.gin")) as handle:
            saved = handle.read()
    except OSError:
        saved = ""
    diff = config_difference(saved, config_text, "in the run directory")
    if diff is None:
        return
    diff = "\n".join(diff)
    raise RunExistsError(f"The run {run_dir} was started with another configuration; resume it "
                         "with the same files and bindings (or --resume), or choose another "
                         f"--run_name. The difference:\n{diff}")


def write_text(run_dir, name, text):
    with open(os.path.join(run_dir, name), "w") as handle:
        handle.write(text)


def with_group_note(config_text):
    """``config_text`` for a run's config.gin or operative_config.gin, with a note on top where
    it holds a sweep's or study's own bindings: given as ``--gin_file``, the file would launch the
    whole group again (with each variant's bindings over this run's), not this run."""
    def bound(name):  # a binding of ``name`` to something else than None (gin's default)
        return any(line.startswith(f"{name} = ") and line.split("=", 1)[1].strip() != "None"
                   for line in config_text.splitlines())

    sweep, study = bound("sweep.variants"), bound("study.batch_sizes")
    if not (sweep or study):
        return config_text
    unset = " ".join(f"--gin_bindings='{binding}'" for binding, used in (
        ("sweep.variants = None", sweep), ("sweep.seeds = None", sweep),
        ("study.batch_sizes = None", study)) if used)
    return (f"# This run is one of a {'sweep' if sweep else 'study'}'s runs, and this file holds "
            "the group's bindings too:\n# --gin_file=<this file> alone launches the whole group "
            f"again. To rerun this run alone, add\n# {unset}\n\n" + config_text)


def write_json(run_dir, name, payload):
    """Writes ``name`` atomically (a temporary file renamed into place); a failed write (a full
    disk) leaves the previous file as it was and no temporary file behind. Standard JSON
    (``json_files.plain``): NumPy values as numbers, inf and nan as null."""
    tmp = os.path.join(run_dir, name + ".tmp")
    try:
        with open(tmp, "w") as handle:
            json.dump(json_files.plain(payload), handle, indent=2, sort_keys=True,
                      allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())  # the data on disk before the rename makes it the file
        os.replace(tmp, os.path.join(run_dir, name))
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def mark_failed(run_dir, error):
    write_json(run_dir, "status.json", {"status": "failed", "error": errors.summary(error)})


def mark_interrupted(run_dir, reason, update):
    write_json(run_dir, "status.json", {"status": "interrupted", "reason": str(reason),
                                        "update": update, "time": time.time()})
