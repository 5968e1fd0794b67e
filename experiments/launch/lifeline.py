"""A worker's tie to its launcher: the worker ends when the launcher does.

A study's ``--jobs`` workers (``main.py --worker``) and single-run children (``--run_dir``) are
processes of their launcher. If the launcher is killed (SIGKILL, a lost terminal), a worker left
running would train its run to the end unattended, re-parented to init, with nobody to collect its
result. ``die_with_parent`` asks the Linux kernel to send the worker SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``): the worker then stops as on any SIGTERM, at the next update, with a
checkpoint and its run marked 'interrupted', resumable by relaunching the study. Imports no
TensorFlow (it runs before the worker's imports).
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid, sig=signal.SIGTERM):
    """Has the kernel send ``sig`` to this process when its parent dies; sends it at once when
    the parent (``parent_pid``, read before this call) is already gone. Returns whether the tie
    is set (False off Linux, where nothing is done)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}")
    if os.getppid() != parent_pid:  # the parent died before the tie was made
        os.kill(os.getpid(), sig)
    return True
