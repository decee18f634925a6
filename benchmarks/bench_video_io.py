"""Video I/O throughput and peak memory of codeformer.video on this machine.

Makes a 10 s 720p clip with AAC audio (the astronaut photo, moving, with noise), then measures
in fresh subprocesses, so that each peak RSS belongs to one measurement:

- ``decode``: PyAV decode + conversion to BGR arrays only (the input side's ceiling);
- ``transform/<preset>``: :func:`codeformer.video.transform_video` with an identity
  ``process_batch``, i.e. decode + encode (H.264, CRF 18) + audio remux, for the default
  ``medium`` preset and for ``veryfast``.

Prints a table and writes ``benchmarks/results/video_io.json`` with a machine description.
Usage: ``python benchmarks/bench_video_io.py [--seconds 10] [--width 1280 --height 720]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "video_io.json"
CLIP_FPS = 30  # frame rate of the benchmark clip
PRESETS = ("medium", "veryfast")  # the default, and a faster one for comparison


def _child_decode(src: str) -> dict:
    """Decode every frame to BGR the way transform_video's decoder thread does."""
    import av
    from av.video.reformatter import VideoReformatter

    baseline_kib = _peak_rss_kib()
    scaler = VideoReformatter()
    started = time.perf_counter()
    frames = 0
    with av.open(src) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            scaler.reformat(frame, format="bgr24").to_ndarray()
            frames += 1
    seconds = time.perf_counter() - started
    return _result(frames, seconds, baseline_kib)


def _child_transform(src: str, dst: str, preset: str) -> dict:
    from codeformer.video import transform_video

    baseline_kib = _peak_rss_kib()
    stats = transform_video(src, dst, lambda batch: batch, preset=preset, progress=False)
    result = _result(stats.frames_out, stats.seconds, baseline_kib)
    result["audio"] = list(stats.audio)
    result["output_bytes"] = os.path.getsize(dst)
    return result


def _peak_rss_kib() -> int:
    """This process's peak resident memory in KiB.

    VmHWM rather than ru_maxrss: Linux carries ru_maxrss over fork + exec, so a child would
    report its parent's peak (here: the clip maker's).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def _result(frames: int, seconds: float, baseline_kib: int) -> dict:
    peak_kib = _peak_rss_kib()
    return {
        "frames": frames,
        "seconds": round(seconds, 3),
        "fps": round(frames / seconds, 2),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "rss_after_imports_mib": round(baseline_kib / 1024, 1),
    }


def _run_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    import av

    from benchmarks.machine import describe_machine
    from codeformer.video import h264_encoder

    return {
        **describe_machine(),
        "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "h264_encoder": h264_encoder(),
    }


def _make_clip(path: Path, seconds: float, width: int, height: int) -> None:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from video_factory import face_image, make_clip

    make_clip(
        path,
        frames=round(seconds * CLIP_FPS),
        fps=CLIP_FPS,
        size=(width, height),
        audio="aac",
        image=face_image((width, height)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode, *rest = args.child
        result = _child_decode(*rest) if mode == "decode" else _child_transform(*rest)
        print(json.dumps(result))
        return

    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.machine import save_report

    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / "clip_720p.mp4"
        started = time.perf_counter()
        _make_clip(src, args.seconds, args.width, args.height)
        print(f"made {src.name} ({args.width}x{args.height}, {args.seconds:g} s, {CLIP_FPS} fps, "
              f"AAC) in {time.perf_counter() - started:.1f} s")
        runs = {"decode": _run_child("decode", str(src))}
        for preset in PRESETS:
            dst = Path(folder) / f"out_{preset}.mp4"
            runs[f"transform/{preset}"] = _run_child("transform", str(src), str(dst), preset)

    print(f"{'run':<22}{'frames':>8}{'seconds':>10}{'fps':>9}{'peak RSS MiB':>14}")
    for name, run in runs.items():
        print(f"{name:<22}{run['frames']:>8}{run['seconds']:>10.2f}{run['fps']:>9.1f}"
              f"{run['peak_rss_mib']:>14.1f}")
    report = {
        "benchmark": "video_io",
        "clip": {
            "width": args.width,
            "height": args.height,
            "fps": CLIP_FPS,
            "seconds": args.seconds,
            "audio": "aac",
        },
        "process_batch": "identity",
        "crf": 18,
        "machine": _machine(),
        "runs": runs,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_report(report, args.output)


if __name__ == "__main__":
    main()
