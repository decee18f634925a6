"""A face detector run in a process of its own, so that detection and restoration share the cores.

dlib's CNN detector uses one core and holds Python's GIL while it works: in a thread beside the
restorer it would stall the restorer's Python as well, so a job with several pictures (or frames)
runs it here instead, in child Python processes, while this process restores the previous picture's
faces. Two children by default (:data:`DEFAULT_PROCESSES`): the next two pictures are detected at
once, so that a core is not left idle while the restorer waits for a detection. Each child receives
the detector pickled (dlib's: its two file paths, read again there) and answers each picture with the
same faces the detector gives in this process.

A child is a plain ``python -m codeformer.face.detection_process`` speaking pickle over its stdin
and stdout, not :mod:`multiprocessing`: a spawned multiprocessing child re-imports the caller's main
script (the command line's, which imports torch), and a forked one inherits the restorer's threads.
It imports only the detector's own code and ends when this side closes the pipe or exits. Example::

    with DetectionProcess(detector, processes=2) as apart:
        faces = apart.detect(picture)   # the same faces as detector.detect(picture)
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from codeformer.errors import CodeFormerError
from codeformer.face.detection import DetectedFace, FaceDetector

__all__ = ["DEFAULT_PROCESSES", "DetectionProcess", "runs_apart"]

logger = logging.getLogger(__name__)

# Children of a job: two pictures detected at once keep both cores of a 2-core machine busy while the
# restorer waits for detections; each more child holds another copy of dlib's working memory (which grows
# with the picture's size), so more cores do not bring more children.
DEFAULT_PROCESSES = 2
# Seconds to wait for the child to leave on its own once its pipe is closed, before it is killed.
STOP_TIMEOUT_S = 5.0


def runs_apart(detector: FaceDetector | None) -> bool:
    """Whether ``detector`` is better run in a process of its own when a job has several pictures (dlib)."""
    return bool(getattr(detector, "prefers_own_process", False))


class DetectionProcess:
    """A :class:`~codeformer.face.detection.FaceDetector` whose :meth:`detect` runs in child processes.

    Everything else (``name``, ``template_name``, ``area_factor`` ...) is the wrapped detector's. With
    ``processes`` children, as many pictures are detected at once (calls from several threads each take
    a free child, in turn; more calls wait). Close it (or use it as a context manager) to stop them.
    """

    def __init__(self, detector: FaceDetector, processes: int = 1) -> None:
        self._detector = detector
        payload = pickle.dumps(detector)  # before starting anything: a detector that cannot be sent fails here
        self._children: list[_Child] = []
        try:
            for _ in range(max(1, processes)):
                self._children.append(_Child(payload))
        except BaseException:
            self.close(wait=False)
            raise
        # Free children, first in first out: successive calls from one thread take turns too.
        self._free: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        for child in self._children:
            self._free.put(child)

    @property
    def processes(self) -> int:
        """How many pictures this detects at once."""
        return len(self._children)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this object lacks: the detector's own description (its batched
        # detection would run in this process: frames go through detect one by one instead).
        if name.startswith("__") or name in ("_detector", "_children", "detect_batch"):
            raise AttributeError(name)
        return getattr(self._detector, name)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        child = self._free.get()
        try:
            status, value = child.ask(image)
        except (EOFError, ValueError, OSError):
            raise self._stopped(child) from None
        finally:
            self._free.put(child)
        if status == "error":
            raise value
        return value

    def close(self, *, wait: bool = True) -> None:
        """Stop the children: each leaves when its input ends (killed if it does not within a few seconds);
        ``wait=False`` kills them at once (the job is leaving on Ctrl-C or an error: no answer is wanted, and
        a dlib detection under way would hold the exit for seconds)."""
        for child in self._children:
            child.end_input()
        deadline = time.monotonic() + (STOP_TIMEOUT_S if wait else 0.0)
        for child in self._children:
            child.stop(deadline)

    def __enter__(self) -> "DetectionProcess":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(wait=exc_type is None)

    def _stopped(self, child: "_Child") -> CodeFormerError:
        code = child.process.poll()
        how = f" (exit code {code})" if code is not None else ""
        return CodeFormerError(f"the {self._detector.name} detection process stopped{how}: out of memory? "
                               "Free memory or choose another face detector")


class _Child:
    """One ``python -m codeformer.face.detection_process``, sent the pickled detector, asked one picture at a time."""

    def __init__(self, payload: bytes) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._to_child: IO[bytes] = self.process.stdin
        self._from_child: IO[bytes] = self.process.stdout
        try:
            self._send(payload)
        except (BrokenPipeError, ValueError, OSError):
            pass  # a child that died at once is reported by the first picture asked of it

    def ask(self, image: np.ndarray) -> tuple[str, Any]:
        """The child's answer for ``image``: ("faces", faces) or ("error", exception); EOFError if it stopped."""
        self._send(pickle.dumps(image, protocol=pickle.HIGHEST_PROTOCOL))
        return _read_message(self._from_child)

    def end_input(self) -> None:
        """Close its input: the child answers the picture it is on, if any, then leaves."""
        try:
            self._to_child.close()
        except OSError:
            pass  # it is gone already

    def stop(self, deadline: float) -> None:
        """Wait for the child to leave until ``deadline`` (time.monotonic()), else kill it; then close its output.

        The output is closed last: a thread of this process may still be reading the child's last answer
        (closing the stream would wait for that read), and a killed child ends that read.
        """
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        try:
            self._from_child.close()
        except OSError:
            pass

    def _send(self, data: bytes) -> None:
        self._to_child.write(len(data).to_bytes(8, "little"))
        self._to_child.write(data)
        self._to_child.flush()


def _read_message(stream: IO[bytes]) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the pipe closed")
    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the pipe closed mid-message")
    return pickle.loads(data)


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child's loop: read the detector, then answer each picture with its faces (or the error it raised)."""
    detector = _read_message(requests)
    while True:
        try:
            image = _read_message(requests)
        except EOFError:
            return  # the parent closed the pipe or exited
        try:
            answer: tuple[str, Any] = ("faces", detector.detect(image))
        except Exception as error:  # noqa: BLE001 - handed to the parent, which raises it where detect was called
            try:
                pickle.loads(pickle.dumps(error))  # some exceptions do not come back from a pickle
            except Exception:  # noqa: BLE001
                error = CodeFormerError(f"{type(error).__name__}: {error}")
            answer = ("error", error)
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            answers.write(len(data).to_bytes(8, "little"))
            answers.write(data)
            answers.flush()
        except (BrokenPipeError, ValueError):
            return  # the parent left while this picture was being detected (Ctrl-C, an error): nothing to say


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the parent decides what stops; this child ends with its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(sys.stdin.buffer, sys.stdout.buffer)
    # What a broken pipe left unwritten would otherwise be flushed (and fail, noisily) as Python exits.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
