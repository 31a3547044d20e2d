"""
The one place that picks Twisted's global reactor when a caller gave none.

Every class that schedules work takes a C{reactor} argument (tests pass a
L{twisted.internet.task.Clock} or a C{MemoryReactorClock}); only when it is
left out does the global reactor get imported, and only here, lazily, so
that importing conchshare never installs a reactor.
"""

from __future__ import annotations

from typing import Any, TypeVar

_R = TypeVar("_R")


def orGlobalReactor(reactor: _R | None) -> _R | Any:
    """
    Return C{reactor}, or Twisted's global reactor when it is L{None}.

    The global reactor is imported at the first call that needs it, not
    when this module is imported.
    """
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as globalReactor

    return globalReactor
