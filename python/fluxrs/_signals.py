"""Holding Ctrl-C back while a step is written, so that a step is applied whole or not at all.

Python raises KeyboardInterrupt between any two bytecodes of the main thread; an optimiser
update that writes parameters one after another (a rule implemented in Python, or several
rule groups) could otherwise be cut in the middle, leaving some parameters updated and
others not. Inside `deferred_interrupts()` a SIGINT is recorded instead, and delivered to
the previous handler (normally: KeyboardInterrupt raised) as soon as the block ends.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["deferred_interrupts"]


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the block with SIGINT held back; deliver it afterwards. A no-op outside the main
    thread (signals are handled there only) and where the handler is not Python's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGINT)
    if old is None:  # installed outside Python: it cannot be put back from here
        yield
        return
    received: list = []

    def hold(signum, frame):
        received.append(frame)

    try:
        signal.signal(signal.SIGINT, hold)
    except (ValueError, OSError):  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if received:
            if callable(old):
                old(signal.SIGINT, received[-1])  # Python's default handler raises KeyboardInterrupt
            elif old == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)
