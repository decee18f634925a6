"""The per-file run loop every job shares: progress, one line per failure, a summary, an exit code.

A batch is read, processed and saved item by item (or a few items at a time, so that faces from
several files share one network forward). A file that cannot be read, or whose processing fails,
is reported in one line and the rest of the batch still runs. Nothing is written for a failed file.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Sequence, TypeVar

from codeformer.errors import CodeFormerError
from codeformer.progress import Progress

logger = logging.getLogger(__name__)

Loaded = TypeVar("Loaded")
Result = TypeVar("Result")


@dataclass
class BatchReport:
    """What happened to a batch's inputs."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)  # one line per failed input

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self, verb: str = "restored") -> str:
        return f"{verb} {self.done}, skipped {self.skipped}, failed {self.failed}"


def describe_failure(error: BaseException) -> str:
    """One line for a failure: the user-facing message, or the type and text of an unexpected error."""
    if isinstance(error, CodeFormerError):
        return str(error)
    # A torch error can only come from a process that imported torch: asking here imports nothing.
    torch = sys.modules.get("torch")
    out_of_memory = (MemoryError,) if torch is None else (MemoryError, torch.OutOfMemoryError)
    if isinstance(error, out_of_memory):
        return "out of memory: try a smaller batch size or upsampler tile, or the CPU"
    text = " ".join(str(error).split()) or "no details"
    return f"unexpected error ({type(error).__name__}: {text[:300]})"


@dataclass
class Batch(Generic[Loaded, Result]):
    """How to run one kind of input: load one, process several at once, save one."""

    load: Callable[[Path], Loaded]
    process: Callable[[list[Loaded]], list[Result]]
    save: Callable[[Path, Result], None]
    is_done: Callable[[Path], bool] | None = None  # --skip_existing: True when the output is there
    chunk_size: int = 1  # inputs processed by one `process` call
    # How many chunks load at once in helper threads, ahead of their turn, while the current one is
    # processed and saved: loads and processing share the cores; results and their order are the same.
    # Chunks in memory at once: at most this many plus one.
    load_ahead: int = 0
    # A load that failed ahead with this kind of error is tried again in its turn (e.g. memory that the
    # chunk being processed held when it was tried).
    retry_in_turn: Callable[[BaseException], bool] | None = None


class _Skipped:
    """An input whose output is there already (skip-existing)."""


_SKIPPED = _Skipped()


def _load_chunk(batch: Batch[Loaded, Result], chunk: Sequence[Path]) -> list[tuple[Path, object]]:
    """Each input of ``chunk`` loaded, or what stopped it: :data:`_SKIPPED` or the exception its load raised."""
    entries: list[tuple[Path, object]] = []
    for path in chunk:
        if batch.is_done is not None and batch.is_done(path):
            entries.append((path, _SKIPPED))
            continue
        try:
            entries.append((path, batch.load(path)))
        except Exception as error:  # noqa: BLE001 - reported per file, the batch goes on
            entries.append((path, error))
    return entries


def run_batch(
    inputs: Sequence[Path],
    batch: Batch[Loaded, Result],
    *,
    desc: str = "restoring",
    unit: str = "image",
    progress: bool = True,
    describe: Callable[[BaseException], str] = describe_failure,
) -> BatchReport:
    """Run ``batch`` over ``inputs``; never raises for a single input's failure (KeyboardInterrupt does).

    ``describe`` words a failure in one line (the command line names its own flags in it).
    """
    report = BatchReport()

    def fail(path: Path, error: BaseException) -> None:
        line = describe(error)
        if not line.startswith(str(path)) and not line.startswith(path.name):
            line = f"{path.name}: {line}"
        logger.error("%s", line)
        logger.debug("details for %s", path, exc_info=error)
        report.failed += 1
        report.notes.append(line)

    chunk_size = max(1, batch.chunk_size)
    chunks = [inputs[start:start + chunk_size] for start in range(0, len(inputs), chunk_size)]
    # Helper threads load the chunks in order, `loaders` at once, up to `loaders` beyond the one being processed.
    loaders = min(max(0, int(batch.load_ahead)), len(chunks)) if len(chunks) > 1 else 0
    ahead = ThreadPoolExecutor(loaders, thread_name_prefix="codeformer-load") if loaders else None
    upcoming: deque[Future[list[tuple[Path, object]]]] = deque()
    submitted = 0
    try:
        with Progress(total=len(inputs), desc=desc, unit=unit, enabled=progress) as bar:
            for index, chunk in enumerate(chunks):
                while ahead is not None and submitted <= min(index + loaders, len(chunks) - 1):
                    upcoming.append(ahead.submit(_load_chunk, batch, chunks[submitted]))
                    submitted += 1
                entries = upcoming.popleft().result() if ahead is not None else _load_chunk(batch, chunk)
                loaded: list[tuple[Path, Loaded]] = []
                for path, entry in entries:
                    if isinstance(entry, BaseException) and ahead is not None and batch.retry_in_turn is not None \
                            and batch.retry_in_turn(entry):
                        (path, entry), = _load_chunk(batch, [path])
                    if entry is _SKIPPED:
                        report.skipped += 1
                        bar.update(1, f"{path.name} (done before)")
                    elif isinstance(entry, BaseException):
                        fail(path, entry)  # its own error line names it
                        bar.update(1)
                    else:
                        loaded.append((path, entry))  # type: ignore[arg-type]
                if not loaded:
                    continue
                bar.working_on(", ".join(path.name for path, _ in loaded))
                try:
                    results = batch.process([item for _, item in loaded])
                except Exception as error:  # noqa: BLE001
                    for path, _ in loaded:
                        fail(path, error)
                    bar.update(len(loaded))
                    continue
                for (path, _), result in zip(loaded, results):
                    try:
                        batch.save(path, result)
                    except Exception as error:  # noqa: BLE001
                        fail(path, error)
                        bar.update(1)
                        continue
                    report.done += 1
                    bar.update(1, path.name)
    finally:
        if ahead is not None:
            ahead.shutdown(wait=False, cancel_futures=True)
    return report


def ensure_writable_folder(folder: Path) -> None:
    """Fail with a one-line error before any work starts if ``folder`` cannot be written (or created).

    Nothing is created here: folders are made when the first output is written into them, so a run
    that fails early leaves no empty folder behind.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CodeFormerError(f"cannot create output folder {folder}: {existing} is not a folder; choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CodeFormerError(f"output folder {existing} is not writable; choose another output folder")
