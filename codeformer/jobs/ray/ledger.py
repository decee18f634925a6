"""``<out>/ray_report.jsonl``: one line per input of a cluster job, with what happened to it.

Each line is a JSON object::

    {"input": "s3://bucket/photos/a.jpg", "status": "done", "output": "final_results/a.png", "error": null}

``status`` is one of :data:`STATUSES`: ``done`` (restored now), ``skipped`` (its result was
already there: resumed), ``failed`` (``error`` says why, in the line the log showed), ``not_read``
(a folder entry that is not a picture: ``error`` says what it is) or ``not_run`` (the job was
interrupted or failed before it got there). Lines keep the inputs' order. The file is written
atomically when the job ends, however it ends, so it always lists every input.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from codeformer.jobs.storage import Folder

__all__ = ["REPORT_NAME", "STATUSES", "Ledger"]

REPORT_NAME = "ray_report.jsonl"
Status = Literal["done", "skipped", "failed", "not_read", "not_run"]
STATUSES: tuple[Status, ...] = ("done", "skipped", "failed", "not_read", "not_run")


class Ledger:
    """Every input's status; inputs are listed up front (``not_run``) and updated as results come."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Any]] = {}

    def add(self, input_location: str, status: Status = "not_run", *, output: str | None = None,
            error: str | None = None, **details: Any) -> None:
        entry = self._entries.setdefault(input_location, {"input": input_location})
        entry.update(status=status, output=output if output is not None else entry.get("output"), error=error,
                     **details)

    def status(self, input_location: str) -> Status:
        return self._entries[input_location]["status"]

    def count(self, status: Status) -> int:
        return sum(entry["status"] == status for entry in self._entries.values())

    def to_bytes(self) -> bytes:
        return "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in self._entries.values()).encode("utf-8")

    def write(self, folder: Folder, name: str = REPORT_NAME) -> None:
        folder.write_bytes(name, self.to_bytes())
