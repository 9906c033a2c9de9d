"""numba's thread pool: the threading layer it starts on, chosen when csr-index first needs it.

numba's default layer falls back to ``workqueue`` where neither TBB nor OpenMP loads, and
``workqueue`` aborts the process when two threads launch parallel kernels at once (concurrent
searches); the ``threadsafe`` layer takes TBB or OpenMP only. The pool starts on the first
parallel kernel launch or ``numba.get_num_threads()`` call, and its layer cannot change after
that, so every csr-index path that starts it calls :func:`use_threadsafe_layer` (or
:func:`num_threads`) first. Importing csr-index changes nothing for other numba code in the
process; a layer chosen explicitly (``NUMBA_THREADING_LAYER``, or ``numba.config.THREADING_LAYER``
set beforehand) is kept.
"""

from __future__ import annotations

import logging
import os

import numba

__all__ = ["use_threadsafe_layer", "num_threads"]

log = logging.getLogger(__name__)

_done = False


def use_threadsafe_layer() -> None:
    """Make numba's pool start on the ``threadsafe`` layer unless the user chose one; call it
    before anything that may start the pool. Warns once if the pool already runs on ``workqueue``
    (started by other code first)."""
    global _done
    if _done:
        return
    try:
        layer = numba.threading_layer()  # the pool is running: too late to choose
    except ValueError:  # not started yet
        if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
            numba.config.THREADING_LAYER = "threadsafe"
    else:
        if layer == "workqueue":
            log.warning("numba's thread pool was started on its 'workqueue' layer before csr-index used it: "
                        "searches from several threads at once can abort the process. Install tbb, or set "
                        "NUMBA_THREADING_LAYER=threadsafe")
    _done = True  # (set last: a thread racing this one repeats the same, harmless, steps)


def num_threads() -> int:
    """numba's current thread count (``numba.get_num_threads``), its pool started on the thread-safe layer."""
    use_threadsafe_layer()
    return numba.get_num_threads()
