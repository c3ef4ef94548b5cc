"""How Linux schedules the shop's processes: SCHED_BATCH (SCHED_BATCH=1,
the default), the policy for throughput work that sched(7) describes.

Every call crosses threads: grpc's poller hands the call to a worker, the
worker blocks on the next hop, a thread releases the GIL to another. Under
the normal policy a thread that wakes another is often preempted by it at
once, and on a busy machine the two ping-pong over the GIL. SCHED_BATCH
only drops that wakeup preemption: a woken thread runs at the next tick or
on an idle CPU, so an idle machine answers as fast as before and a busy one
switches less (docs/performance.md: a third fewer context switches per
order; reads/s +9 to +17 %, orders/s +2 to +12 % here).

The policy is per thread and inherited by the threads and processes started
after it is set, so a process sets it first thing in its main thread.
Lowering a process to SCHED_BATCH needs no privilege; where the platform
has no such policy (macOS) nothing changes.
"""

import os

from plumbing.config import env_bool


def schedule_as_batch() -> bool:
    """This thread, and every thread and process it starts from now on,
    scheduled as SCHED_BATCH, unless SCHED_BATCH=0. True if it is."""
    if not env_bool("SCHED_BATCH", True) or not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        # A sandbox that forbids the call: the normal policy serves as well, only slower.
        return False
    return True
