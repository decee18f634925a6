"""A face detector run in a process of its own, so that detection and restoration share the cores.

dlib's CNN detector uses one core and holds Python's GIL while it works: in a thread beside the
restorer it would stall the restorer's Python as well, so a job with several pictures (or frames)
runs it here instead, in a child Python process, while this process restores the previous picture's
faces. The child receives the detector pickled (dlib's: its two file paths, read again there) and
answers each picture with the same faces the detector gives in this process.

The child is a plain ``python -m codeformer.face.detection_process`` speaking pickle over its stdin
and stdout, not :mod:`multiprocessing`: a spawned multiprocessing child re-imports the caller's main
script (the command line's, which imports torch), and a forked one inherits the restorer's threads.
It imports only the detector's own code and ends when this side closes the pipe or exits. Example::

    with DetectionProcess(detector) as apart:
        faces = apart.detect(picture)   # the same faces as detector.detect(picture)
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np

from codeformer.errors import CodeFormerError
from codeformer.face.detection import DetectedFace, FaceDetector

__all__ = ["DetectionProcess", "runs_apart"]

logger = logging.getLogger(__name__)

# Seconds to wait for the child to leave on its own once its pipe is closed, before it is killed.
STOP_TIMEOUT_S = 5.0


def runs_apart(detector: FaceDetector | None) -> bool:
    """Whether ``detector`` is better run in a process of its own when a job has several pictures (dlib)."""
    return bool(getattr(detector, "prefers_own_process", False))


class DetectionProcess:
    """A :class:`~codeformer.face.detection.FaceDetector` whose :meth:`detect` runs in a child process.

    Everything else (``name``, ``template_name``, ``area_factor`` ...) is the wrapped detector's. One
    picture at a time (calls from several threads wait for each other). Close it (or use it as a
    context manager) to stop the child.
    """

    def __init__(self, detector: FaceDetector) -> None:
        self._detector = detector
        self._lock = threading.Lock()
        payload = pickle.dumps(detector)  # before starting anything: a detector that cannot be sent fails here
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self._child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       env=env)
        assert self._child.stdin is not None and self._child.stdout is not None
        self._to_child: IO[bytes] = self._child.stdin
        self._from_child: IO[bytes] = self._child.stdout
        self._send(payload, raw=True)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this object lacks: the detector's own description (its batched
        # detection would run in this process: frames go through detect one by one instead).
        if name.startswith("__") or name in ("_detector", "detect_batch"):
            raise AttributeError(name)
        return getattr(self._detector, name)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        with self._lock:
            self._send(image)
            status, value = self._receive()
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        """Stop the child (it leaves when its input ends; killed if it does not within a few seconds)."""
        child = self._child
        if child.poll() is None:
            for stream in (self._to_child, self._from_child):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                child.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def __enter__(self) -> "DetectionProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, value: Any, *, raw: bool = False) -> None:
        data = value if raw else pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._to_child.write(len(data).to_bytes(8, "little"))
            self._to_child.write(data)
            self._to_child.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise self._stopped() from None

    def _receive(self) -> tuple[str, Any]:
        try:
            return _read_message(self._from_child)
        except (EOFError, ValueError, OSError):
            raise self._stopped() from None

    def _stopped(self) -> CodeFormerError:
        code = self._child.poll()
        how = f" (exit code {code})" if code is not None else ""
        return CodeFormerError(f"the {self._detector.name} detection process stopped{how}: out of memory? "
                               "Free memory or use another --detection_model")


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
        answers.write(len(data).to_bytes(8, "little"))
        answers.write(data)
        answers.flush()


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the parent decides what stops; this child ends with its pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(sys.stdin.buffer, sys.stdout.buffer)
