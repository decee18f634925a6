"""The project's promises that no single module owns: README vs CI, one URL table, no prints in the library."""

from __future__ import annotations

import re
from pathlib import Path

from codeformer.weights import WEIGHTS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _first_command_after(heading: str) -> str:
    """The first line of the first ```bash block after the paragraph starting with ``heading``."""
    start = README.index(heading)
    block = re.search(r"```bash\n(.+?)\n```", README[start:], re.S)
    assert block, f"no command block after {heading!r}"
    return block.group(1).strip().splitlines()[0]


def test_ci_runs_exactly_the_readme_setup_and_test_commands() -> None:
    setup = _first_command_after("Set up")
    test = _first_command_after("Test:")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in ci_lines if line and not line.startswith(("#", "set ", "cd ", "command -v"))]
    assert commands == [setup, test]


def test_readme_weights_table_matches_the_registry() -> None:
    # A sha256 in backticks, or for files without a published one, how they are checked instead.
    rows = {m.group(1): (m.group(2), m.group(3)) for m in
            re.finditer(r"^\| `([^`]+)` \| ([\d.]+ MB|size not published) \| (?:`([0-9a-f]{64})`|not published, "
                        r"checked against its first download) \|", README, re.M)}
    used = {key: entry for key, entry in WEIGHTS.items() if entry.used}
    assert set(rows) == set(used)
    for key, (size, sha256) in rows.items():
        assert sha256 == used[key].sha256
        if used[key].size is None:
            assert size == "size not published"
        else:
            assert abs(float(size.removesuffix(" MB")) * 1e6 - used[key].size) < 0.06e6


def test_urls_live_only_in_the_weights_table() -> None:
    offenders = [
        str(path.relative_to(REPO)) for path in (REPO / "codeformer").rglob("*.py")
        if path.name != "weights.py" and re.search(r"https?://", path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_library_code_does_not_print() -> None:
    offenders = []
    for path in (REPO / "codeformer").rglob("*.py"):
        if path.name == "cli.py":  # the command line is the one place that talks to the terminal
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*print\(", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert offenders == []


def test_sample_inputs_exist() -> None:
    for folder in ("whole_imgs", "cropped_faces", "gray_faces", "masked_faces"):
        assert any((REPO / "inputs" / folder).iterdir()), f"inputs/{folder} is empty"


def test_the_readme_setup_installs_the_package_and_its_command() -> None:
    # `pip install -r requirements.txt` (the README's set-up) must give `codeformer ...` and `import codeformer`.
    requirements = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert "-e ." in requirements
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    assert '"console_scripts": ["codeformer=codeformer.cli:main"]' in setup
    from importlib.metadata import entry_points

    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts.get("codeformer") == "codeformer.cli:main"  # what the set-up installed here


def test_every_script_and_benchmark_compiles() -> None:
    # Benchmarks and scripts run outside the suite: a syntax error there would go unseen until a user runs one.
    files = [*sorted((REPO / "benchmarks").glob("*.py")), *sorted((REPO / "scripts").glob("*.py")),
             *sorted(REPO.glob("*.py"))]
    assert len(files) > 20
    for path in files:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
