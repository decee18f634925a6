"""Restorations in a process of their own, so that the server answers while they run.

The web app's server (Gradio's event loop, uploads, the page, queue status) and the networks
share the machine's cores. In one process they also share Python's GIL, which dlib's detector and
much image code hold for whole seconds: the server then cannot answer, and clients time out (a
plain Gradio client gives a request 5 seconds). :class:`RestorationProcess` runs the handlers of
:mod:`codeformer.webapp.handlers` in a child process at a lower scheduling priority instead; the
server only sends the request (paths and option objects) and waits, and the child sends back
progress and the outcome (paths of the files it wrote). The child keeps its
:class:`~codeformer.webapp.cache.PipelineCache` between requests, so the networks load once. A
child that dies (killed for memory, a crash in native code) fails the request in one line and is
started afresh for the next.

:class:`~codeformer.webapp.cache.PipelineCache` runs the same handlers in this process (``run``):
tests and embedding applications use it directly.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Callable, Protocol

from codeformer.errors import CodeFormerError
from codeformer.options import LoadOptions
from codeformer.webapp.cache import DEFAULT_CACHE_SIZE, PipelineCache, PipelineFactory, load_real_pipeline
from codeformer.webapp.requests import PhrasedError, phrase_failure

__all__ = ["WORKER_NICENESS", "HandlerRunner", "RestorationProcess"]

logger = logging.getLogger(__name__)

# How much lower the child's scheduling priority is than the server's (os.nice increment): the
# server's few milliseconds of work per request come first, the restorations take the rest.
WORKER_NICENESS = 10
_PARENT_POLL_SECONDS = 1.0


class HandlerRunner(Protocol):
    """Runs a web-app handler ``handler(cache, *args, **kwargs)`` with a pipeline cache; ``base``: the server's
    load settings. Implemented by :class:`PipelineCache` (here) and :class:`RestorationProcess` (in a child)."""

    base: LoadOptions

    def run(self, handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


def _end_with(parent: int) -> None:
    """End this process when the server's process is gone, however it ended (a thread that polls: the
    kernel's parent-death signal would fire when the server's *thread* that started this process ends)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(connection: Any, factory: PipelineFactory, base: LoadOptions, capacity: int, niceness: int,
           parent: int) -> None:
    """The child's loop: one request at a time until the server closes the connection."""
    _end_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is the server's to handle
    if niceness:
        os.nice(niceness)
    cache = PipelineCache(factory, base=base, capacity=capacity)
    while True:
        try:
            handler, args, kwargs, wants_progress = connection.recv()
        except (EOFError, OSError):
            return
        if wants_progress:
            kwargs["progress"] = lambda fraction, text: connection.send(("progress", fraction, text))
        try:
            result = handler(cache, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every failure goes back to the page as one message
            connection.send(("error", phrase_failure(error)))
        else:
            connection.send(("done", result))


class RestorationProcess:
    """Runs web-app handlers in a child process (started on first use), one request at a time.

    ``factory``, ``base`` and ``capacity`` make the child's :class:`PipelineCache` (``factory`` must be
    importable by name: the child is started afresh, not forked). ``progress=`` of a handler is
    relayed from the child to the caller's function.
    """

    def __init__(self, factory: PipelineFactory = load_real_pipeline, *, base: LoadOptions | None = None,
                 capacity: int = DEFAULT_CACHE_SIZE, niceness: int = WORKER_NICENESS) -> None:
        self.base = base if base is not None else LoadOptions()
        self._arguments = (factory, self.base, capacity, niceness)
        self._lock = threading.Lock()
        self._process: Any = None
        self._connection: Any = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def run(self, handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        progress: Callable[[float, str], None] | None = kwargs.pop("progress", None)
        with self._lock:
            connection = self._started()
            try:
                connection.send((handler, args, kwargs, progress is not None))
                while True:
                    kind, *payload = connection.recv()
                    if kind == "progress":
                        if progress is not None:
                            progress(*payload)
                    elif kind == "done":
                        return payload[0]
                    else:
                        raise PhrasedError(payload[0])
            except (EOFError, OSError, BrokenPipeError):
                code = self._stopped()
                raise CodeFormerError(f"the restoration process stopped (exit code {code}"
                                      f"{', killed: out of memory?' if code is not None and code < 0 else ''}); "
                                      "try a smaller picture or upscale") from None

    def _started(self) -> Any:
        if self._process is not None and self._process.is_alive():
            return self._connection
        context = multiprocessing.get_context("spawn")  # not fork: the server runs threads
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, *self._arguments, os.getpid()),
                                  name="codeformer-restorations",
                                  daemon=True)
        process.start()
        theirs.close()
        self._process, self._connection = process, ours
        logger.info("restorations run in process %d", process.pid)
        return ours

    def _stopped(self) -> int | None:
        """Forget a child that is gone (its exit code); the next request starts a new one."""
        process, self._process = self._process, None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if process is None:
            return None
        process.join(timeout=5)
        return process.exitcode

    def close(self) -> None:
        """Stop the child: it ends when its connection closes, or is terminated if a request still runs."""
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()  # a request waiting on it (the server stopping) fails in one line
        if process is not None:
            process.join(timeout=2)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
