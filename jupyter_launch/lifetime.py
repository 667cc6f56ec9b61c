"""Child processes that end with the process that started them: Linux's ``PR_SET_PDEATHSIG`` as a ``preexec_fn``.

A module of its own, importing nothing heavy, so that the agent (its runners, its report renderer) and the runner
(its kernel) share it without the agent importing the runner's notebook machinery.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A call that makes Linux SIGKILL the calling process when its parent dies (a no-op elsewhere).

    It is resolved here and not in the call, so it is safe as a ``preexec_fn``: nothing is imported after fork.
    The signal follows the parent *thread*, so children are started from the main (event loop) thread.
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
