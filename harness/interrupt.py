"""Telling a real interruption from method code that raises.

Python turns Ctrl-C into KeyboardInterrupt, which method code can also raise (as it can raise
SystemExit). A run contains whatever its method raises (the run is recorded `failed` and the
sweep goes on), so a real signal must be recognisable: while `signals_raise` is active, SIGINT
(and the other signals given) raise `Interrupted`, a KeyboardInterrupt subclass that only a
signal handler raises, and that stops the sweep.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """A signal (Ctrl-C, SIGTERM) asked the sweep to stop."""


def _raise(signum, frame):
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def _default(sig) -> object:
    return signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL


@contextmanager
def signals_raise(signals=(signal.SIGINT,), replace_any: bool = False):
    """Within: each of `signals` raises Interrupted. Only Python's default handler is replaced
    unless `replace_any` (an ignored signal stays ignored, as in a background job; a handler
    someone else installed, such as submitit's, is kept). Only in the main thread, where handlers
    can be set; restored on exit."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            current = signal.getsignal(sig)
            if current is _raise or current == signal.SIG_IGN or current is None:
                continue
            if replace_any or current == _default(sig):
                previous[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
