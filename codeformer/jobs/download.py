"""Fetching and checking the pretrained files ahead of time (``codeformer download``).

Targets are weights-root groups (``CodeFormer``, ``facelib`` ..., ``all``) or single files
(``CodeFormer/codeformer.pth``); each file is either downloaded and verified, or, with ``verify``,
its present copy is sha256-checked. One outcome per file, in table order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from codeformer.errors import CodeFormerError
from codeformer.weights import (
    WEIGHT_GROUPS,
    DownloadError,
    MissingWeightsError,
    WeightFile,
    group_entries,
    packaged_copy,
    resolve_weights_dir,
    verify_weight,
    weight_entry,
    weight_path,
)

__all__ = ["FileOutcome", "fetch_weights", "weight_targets"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one pretrained file."""

    key: str  # its path under the weights root
    ok: bool
    detail: str  # "ok", why it failed its check, or why it could not be fetched
    path: Path | None  # where it is (None when missing)


def weight_targets(targets: Sequence[str]) -> list[WeightFile]:
    """The files ``targets`` name (groups, ``all`` or file keys), each once, in the order named."""
    entries: list[WeightFile] = []
    for target in targets:
        found = group_entries(target) if target == "all" or target in WEIGHT_GROUPS else [weight_entry(target)]
        entries.extend(entry for entry in found if entry not in entries)
    return entries


def fetch_weights(targets: Sequence[str], *, weights_dir: str | os.PathLike[str] | None = None,
                  verify: bool = False, progress: bool = True) -> list[FileOutcome]:
    """Download (or, with ``verify``, sha256-check) every file ``targets`` name; never raises for one file.

    When a download fails (no network, say), the files still missing are not tried one by one (each
    would wait for the same timeout): the failing file's outcome carries one message that lists
    them all (:class:`~codeformer.weights.MissingWeightsError`'s), and the others say they were not tried.
    """
    entries = weight_targets(targets)
    if verify:
        return [FileOutcome(entry.key, result.ok, result.detail, result.path)
                for entry, result in ((entry, verify_weight(entry, weights_dir)) for entry in entries)]
    root = resolve_weights_dir(weights_dir)
    outcomes: dict[str, FileOutcome] = {}
    unreachable: DownloadError | None = None
    for entry in entries:
        here = (root / entry.key).is_file() or packaged_copy(entry) is not None
        if unreachable is not None and not here:
            continue  # listed below with the first failure
        try:
            outcomes[entry.key] = FileOutcome(entry.key, True, "ok", weight_path(entry.key, weights_dir,
                                                                                 progress=progress))
        except DownloadError as error:
            unreachable = error
        except CodeFormerError as error:
            outcomes[entry.key] = FileOutcome(entry.key, False, str(error), None)
    if unreachable is not None:
        missing = [entry for entry in entries if entry.key not in outcomes]
        message = str(MissingWeightsError(missing, root, unreachable.reason))
        for position, entry in enumerate(missing):
            outcomes[entry.key] = FileOutcome(entry.key, False, message if position == 0 else "missing (see above)",
                                              None)
    return [outcomes[entry.key] for entry in entries]
