"""The README's Python API snippet, run exactly as written (random weights in the official layouts)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_python_snippet() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    block = re.search(r"```python\n(.+?)\n```", section, re.S)
    assert block, "the Python API section has no python block"
    return block.group(1)


def test_the_snippet_is_short() -> None:
    lines = [line for line in readme_python_snippet().splitlines() if line.strip()]
    assert len(lines) <= 6


def test_the_readme_snippet_runs(restoration_weights: Path, retinaface_weights: Path, parsing_weights: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEFORMER_WEIGHTS_DIR", str(restoration_weights))
    monkeypatch.setenv("CODEFORMER_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # nothing may be downloaded
    monkeypatch.chdir(REPO)  # the snippet names a sample picture by its path in the repository
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_python_snippet(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.image.shape == (1024, 1024, 3)  # the 512x512 sample at upscale 2
    assert printed.getvalue().strip() == f"{result.image.shape} {len(result.faces)}"
