"""How the machine's time went during a measurement (/proc/stat): user,
system, idle and the rest. A mesh whose calls hand work between threads
spends a share of the machine in the kernel and idle between the hand-offs,
which no process's own CPU time shows."""

import statistics


def machine_times() -> list[int] | None:
    """The machine's CPU time so far, in ticks (/proc/stat's first line:
    user, nice, system, idle, iowait, irq, softirq, steal); None off Linux."""
    try:
        with open("/proc/stat") as stat:
            return [int(ticks) for ticks in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def machine_split(before: list[int] | None, after: list[int] | None) -> dict | None:
    """How the machine's time went between two machine_times(), in percent:
    user (nice included), system, idle, and other (waiting on I/O,
    interrupts, stolen by the host)."""
    if before is None or after is None:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent)
    if total <= 0:
        return None
    user, nice, system, idle, *other = spent
    shares = {"user": user + nice, "system": system, "idle": idle, "other": sum(other)}
    return {name: round(100 * ticks / total, 1) for name, ticks in shares.items()}


def median_split(splits: list[dict | None]) -> dict | None:
    """Each share of the machine's time, the median of the runs that have one."""
    splits = [split for split in splits if split]
    if not splits:
        return None
    return {name: round(statistics.median(split[name] for split in splits), 1) for name in splits[0]}
