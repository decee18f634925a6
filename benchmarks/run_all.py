"""Run every speed benchmark, quickly by default, and print one summary table.

Quick (default, about 10 minutes on two CPU cores): per-face times at batch 1 and 4 (2 runs each),
precision quality on 4 real crops with the rejected designs, the whole group photo, and 2 video
frames. ``--full`` uses each script's own defaults (batches 1/4/8, 12 crops, 4 video frames, the
library-default runs too: about half an hour). ``--with-io`` adds the older I/O benchmarks
(video decode/encode, paste-back, upsampler tiling). Each script also runs on its own, with more
options: ``python -m benchmarks.<script> --help``.

Usage, from the repository root::

    python -m benchmarks.run_all [--full] [--with-io]

Results are written under ``benchmarks/results/`` (one JSON per script; ``--results DIR`` elsewhere;
the I/O benchmarks always write to their own default files).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"

# (module, results file, quick arguments, full arguments)
BENCHMARKS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("bench_restore", "restore.json", ("--batches", "1", "4", "--repeats", "2", "--no-untuned"), ()),
    ("bench_precision", "precision.json", ("--faces", "4", "--ablations"), ("--ablations", "--float64")),
    ("bench_picture", "picture.json", (), ("--untuned", "--end-to-end")),
    ("bench_video", "video.json", ("--frames", "2"), ()),
)
IO_BENCHMARKS: tuple[str, ...] = ("bench_video_io", "bench_pasteback", "bench_upsampler")


def _summary(results: Path) -> list[str]:
    """A few headline numbers from the JSON files just written."""
    lines = []
    restore = results / "restore.json"
    if restore.is_file():
        for run in json.loads(restore.read_text())["runs"]:
            config, batches = run["config"], run["result"].get("batches", {})
            if "1" in batches:
                name = "straightforward" if config["variant"] == "straightforward" else config["precision"]
                name += " compiled" if config["compile"] else ""
                name += " tuned" if config["tuned"] else ""
                ratios = [f"{batches['1'][key]:.2f}x {label}" for key, label in (
                    ("vs_straightforward", "straightforward"), ("vs_straightforward_same_settings", "same settings"))
                    if key in batches["1"]]
                lines.append(f"restore {name}: {batches['1']['seconds_per_face']:.2f} s/face"
                             + (f" ({', '.join(ratios)})" if ratios else ""))
    precision = results / "precision.json"
    if precision.is_file():
        for label, r in json.loads(precision.read_text())["results"].items():
            lines.append(f"quality {label}: tokens {r['token_agreement']:.4f}, PSNR min {r['min_psnr_db']} dB")
    picture = results / "picture.json"
    if picture.is_file():
        for run in json.loads(picture.read_text())["runs"]:
            if "total_s" in run:
                lines.append(f"picture {run['precision']}{' tuned' if run['tuned'] else ''}: {run['total_s']:.1f} s")
    video = results / "video.json"
    if video.is_file():
        for run in json.loads(video.read_text())["runs"]:
            if "fps" in run:
                lines.append(f"video {run['precision']}: {run['fps']:.3f} fps, peak {run['peak_rss_mib']:.0f} MiB")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="each script's full default settings")
    parser.add_argument("--with-io", action="store_true",
                        help="also the video I/O, paste-back and upsampler benchmarks")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON files")
    args = parser.parse_args(argv)
    commands = [[f"benchmarks.{name}", *(full if args.full else quick), "--output", str(args.results / file)]
                for name, file, quick, full in BENCHMARKS]
    if args.with_io:
        commands += [[f"benchmarks.{name}"] for name in IO_BENCHMARKS]
    failures = 0
    for command in commands:
        print(f"\n=== python -m {' '.join(command)}", flush=True)
        started = time.perf_counter()
        code = subprocess.run([sys.executable, "-m", *command], cwd=REPO_ROOT).returncode
        failures += code != 0
        outcome = "ok" if code == 0 else f"exit code {code}"
        print(f"=== {command[0]}: {outcome} in {time.perf_counter() - started:.0f} s")
    print("\nsummary:")
    for line in _summary(args.results):
        print(f"  {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
