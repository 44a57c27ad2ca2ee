"""Benchmarks: each compares paths in one run, taking turns, and names the CPU it ran on."""

import resource


def peak_rss_bytes() -> int:
    """This process image's peak resident memory: ``VmHWM`` (``/proc/self/status``), which starts again
    at ``exec``. ``ru_maxrss`` does not on Linux: a child started by ``subprocess`` (vfork, then exec)
    reports its parent's peak when that was higher. ``ru_maxrss`` where there is no ``/proc``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
