"""A serving process's long-lived objects, kept out of the garbage collector's full passes.

CPython's cyclic collector scans every tracked object of the process in a full (oldest
generation) collection, holding the GIL: in a gateway serving a 150,000-vector collection
(about 180,000 tracked objects, most of them the modules, plans and indexes that live as long
as the process) one took 100-130 ms, and every request in flight waited for it. Such a pass
comes every minute or two once a migration makes the router load indexes, and alone it set
the p99 of a phase of a hundred searches. :func:`settle` moves what is alive into the
collector's permanent generation (``gc.freeze``), so later full passes scan only what was
allocated since. ``vecmigrate serve`` settles once it is ready and after each new plan (see
``vecmigrate.serving.planner``); a process that only embeds a router does not, since freezing
is process-wide.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect the young generations (the cyclic garbage of the moment, a few milliseconds),
    then freeze every object left: reference counting still frees them, only cycles among
    them stay until the process ends."""
    gc.collect(1)
    gc.freeze()
