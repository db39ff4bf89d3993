"""A service started by `pirm up`'s supervisor dies with it, even when the supervisor is
killed with SIGKILL: the kernel sends the service SIGTERM (PR_SET_PDEATHSIG).

The service asks for it itself, first thing, when PIRM_SUPERVISOR_PID names its parent; not
the supervisor between fork and exec (subprocess's preexec_fn), where Python code in a
multi-threaded parent can deadlock: seen under load, a service that never started, its log
holding one gRPC poller error written between the fork and the exec that never came."""

from __future__ import annotations

import ctypes
import os
import signal

SUPERVISOR_PID = "PIRM_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_supervisor() -> None:
    supervisor = os.environ.get(SUPERVISOR_PID)
    if not supervisor:
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):  # it died before the call above: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
