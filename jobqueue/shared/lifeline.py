"""Children that die with their parent, even when the parent is SIGKILLed.

``jobqueue up`` runs each child in a session of its own (so a Ctrl-C reaches only ``up``,
which then stops them in order). The price: when ``up`` itself dies without cleaning up
(SIGKILL, OOM killer, a crash), nothing would stop them. On Linux the kernel can:
``prctl(PR_SET_PDEATHSIG, sig)`` in the child makes it receive ``sig`` as soon as the thread
that started it exits. :func:`parent_death_hook` returns that call as a ``preexec_fn`` for
:class:`subprocess.Popen` (run in the child between fork and exec; the setting survives exec).

Elsewhere it returns None and children outlive a killed parent, as before.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

#: ``PR_SET_PDEATHSIG`` from ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1


def parent_death_hook(sig: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies, or None
    when ``sig`` is None or the platform has no ``PR_SET_PDEATHSIG``.

    Call it (and :class:`subprocess.Popen`) from a thread that lives as long as the child
    should: the kernel watches the thread that forked, not the whole process.
    """
    if sig is None or not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not after fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return hook
