"""Ray on one machine: the overhead of a cluster job, how it scales with workers, and a video in segments.

What ``--ray local`` costs and gains against the plain command on the same inputs, on this machine:

- pictures: a folder of ``--pictures`` 640x480 photos with one astronaut each
  (:func:`benchmarks.faces.group_photo`), restored by the plain run (one process, 2 torch threads) and
  by Ray with 1 worker (2 CPUs, 2 threads) and 2 workers (1 CPU, 1 thread each);
- video: a ``--frames`` 640x360 clip at 30 fps with AAC audio and a keyframe every ``--gop``
  frames, restored by the plain run, and by Ray in 1 segment (1 worker, 2 threads) and in 2 segments
  (2 workers, 1 thread each; each decodes and restores 7 frames of context past its seam).

Every run uses the command's default pipeline at its cost: detection at the cost of RetinaFace
ResNet-50 (with the faces dlib finds, :class:`benchmarks.faces.TimedRetinaFace`), random CodeFormer
and ParseNet weights in the official layouts, ``-w 0.5 -s 2``, fp32, the command line's CPU runtime
tuning. A worker (and the plain run) builds its pipeline and restores one warm-up picture first, as
part of its start-up. Each configuration runs in a fresh process. Times:

- ``startup_s``: Ray's start (``ray.init``) for Ray runs, loading the networks for the plain run;
- ``job_s``: the job itself; for Ray it includes starting the worker processes and their loading;
- ``total_s``: both; ``per_second``: inputs (or frames) per second of ``total_s``;
- ``steady_per_second`` (pictures): results per second between the first and the last result, the
  rate once every worker is running.

Usage, from the repository root::

    python -m benchmarks.bench_ray [--pictures 6] [--frames 16] [--gop 8] [--rounds 2]

On a shared machine other people's jobs change the numbers from minute to minute: ``--rounds 2`` runs
every configuration twice, the second time in reverse order, and the summary keeps each one's best.

Prints a table and writes ``benchmarks/results/ray.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, load_average, peak_rss_mib, run_child, save_report  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "ray.json"
PICTURE_SIZE = (640, 480)  # (width, height)
PICTURE_FACE = (320, 230, 300, False)  # (centre x, centre y, side, mirrored): one astronaut
CLIP_SIZE = (640, 360)
CLIP_FACE = (320, 180, 300, False)
CLIP_FPS = 30
UPSCALE = 2  # the reference's default -s
FIDELITY_WEIGHT = 0.5  # the reference's default -w
MACHINE_CPUS = 2  # CPUs the local Ray instance offers: this machine's


@dataclass(frozen=True)
class BenchRecipe:
    """The command's default pipeline at its cost (see the module docstring), built on a worker or here."""

    warm_up: str  # a picture of the inputs' size: restored once while starting (oneDNN set-up, dlib lookup)
    batch_size: int | None = None
    device: str = "cpu"

    def build(self):
        import tempfile as scratch

        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from checkpoint_factory import random_codeformer

        from benchmarks.bench_picture import random_weights_root
        from benchmarks.faces import TimedRetinaFace
        from codeformer.archs import CodeFormerConfig
        from codeformer.registry import load_parser
        from codeformer.pipeline import Pipeline
        from codeformer.precision import configure_cpu_runtime
        from codeformer.registry import model_spec
        from codeformer.restorer import FaceRestorer

        configure_cpu_runtime()
        restorer = FaceRestorer(random_codeformer(CodeFormerConfig(), seed=0), "cpu")
        with scratch.TemporaryDirectory() as folder:
            parser = load_parser(device="cpu", weights_dir=random_weights_root(Path(folder)))
        pipeline = Pipeline(model_spec("codeformer", "restorer"), restorer, detector=TimedRetinaFace(), parser=parser)
        options = pipeline.options(fidelity_weight=FIDELITY_WEIGHT, upscale=UPSCALE)
        pipeline.restore(self.warm_up, fidelity_weight=FIDELITY_WEIGHT, upscale=UPSCALE)
        return pipeline, options


def make_inputs(folder: Path, pictures: int, frames: int, gop: int) -> tuple[list[Path], Path]:
    """The picture folder and the clip (the same photo in every picture, with its own noise)."""
    import cv2
    import numpy as np

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import video_factory

    from benchmarks.faces import group_photo

    base = group_photo([PICTURE_FACE], size=PICTURE_SIZE)
    paths = []
    (folder / "pictures").mkdir()
    for index in range(pictures):
        noise = np.random.default_rng(index).integers(-3, 4, base.shape)
        path = folder / "pictures" / f"photo{index:02d}.png"
        cv2.imwrite(str(path), np.clip(base + noise, 0, 255).astype(np.uint8))
        paths.append(path)
    clip = folder / "clip.mp4"
    # A keyframe every `gop` frames and nowhere else, so the clip can be cut where asked.
    options = {"crf": "12", "preset": "veryfast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
    saved = video_factory._VIDEO_OPTIONS["libx264"]
    video_factory._VIDEO_OPTIONS["libx264"] = options
    try:
        video_factory.make_clip(clip, frames=frames, fps=CLIP_FPS, size=CLIP_SIZE, audio="aac",
                                image=group_photo([CLIP_FACE], size=CLIP_SIZE))
    finally:
        video_factory._VIDEO_OPTIONS["libx264"] = saved
    return paths, clip


def child(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this fresh process."""
    from benchmarks.bench_ray import BenchRecipe as Recipe  # by module name: workers import it from there

    recipe = Recipe(warm_up=config["warm_up"])
    out = Path(config["out"])
    if config["mode"] == "plain":
        return _plain(recipe, config, out)
    return _on_ray(recipe, config, out)


def _plain(recipe: BenchRecipe, config: dict[str, Any], out: Path) -> dict[str, Any]:
    from codeformer.jobs.local import restore_picture_files

    started = time.perf_counter()
    pipeline, options = recipe.build()
    startup = time.perf_counter() - started
    started = time.perf_counter()
    if config["kind"] == "pictures":
        inputs = [Path(p) for p in config["inputs"]]
        report = restore_picture_files(pipeline, inputs, out, options, progress=False)
        count = report.done
    else:
        stats = pipeline.restore_video(config["inputs"][0], out / "clip.mp4", options=options, progress=False)
        count = stats.frames_out
    job = time.perf_counter() - started
    return _timings(count, startup, job, peak_rss_mib=round(peak_rss_mib(), 1))


def _on_ray(recipe: BenchRecipe, config: dict[str, Any], out: Path) -> dict[str, Any]:
    import codeformer.jobs.ray.pictures as pictures_job
    from codeformer.jobs.ray import Workers, ray_session, restore_pictures_on_ray, restore_video_on_ray

    workers = Workers(count=config["workers"], cpus=MACHINE_CPUS // config["workers"], gpus=0)
    finished: list[float] = []
    run_dataset = pictures_job.run_dataset

    def timed_run(rows, worker, job, pool, on_row, **stages):  # the time of each result, for the steady rate
        def record(row):
            finished.extend([time.perf_counter()] * len(row["items"]))
            on_row(row)

        return run_dataset(rows, worker, job, pool, record, **stages)

    pictures_job.run_dataset = timed_run
    started = time.perf_counter()
    with ray_session("local", num_cpus=MACHINE_CPUS):
        startup = time.perf_counter() - started
        started = time.perf_counter()
        if config["kind"] == "pictures":
            report = restore_pictures_on_ray(recipe, config["inputs"], str(out), workers=workers, progress=False)
            count = report.done
        else:
            from codeformer.jobs.ray.video import index_frames

            restore_video_on_ray(recipe, config["inputs"][0], str(out), segments=config["segments"], workers=workers,
                                 progress=False)
            index = index_frames(out / "clip.mp4", 0)
            count = len(index.pts) if index else 0
        job = time.perf_counter() - started
    extra: dict[str, Any] = {"pool": workers.describe()}
    if len(finished) > 1:
        extra["steady_per_second"] = round((len(finished) - 1) / (finished[-1] - finished[0]), 3)
    return _timings(count, startup, job, **extra)


def _timings(count: int, startup: float, job: float, **extra: Any) -> dict[str, Any]:
    total = startup + job
    return {"count": count, "startup_s": round(startup, 1), "job_s": round(job, 1), "total_s": round(total, 1),
            "per_second": round(count / total, 3) if total else 0.0, **extra}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pictures", type=int, default=6, help="pictures in the folder (default 6)")
    parser.add_argument("--frames", type=int, default=16, help="frames of the clip (default 16)")
    parser.add_argument("--gop", type=int, default=8, help="frames between the clip's keyframes (default 8)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every configuration, alternating the order")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}

    configurations = [
        ("pictures", "plain", {}), ("pictures", "ray", {"workers": 1}), ("pictures", "ray", {"workers": 2}),
        ("video", "plain", {}), ("video", "ray", {"workers": 1, "segments": 1}),
        ("video", "ray", {"workers": 2, "segments": 2}),
    ]
    load_before = load_average()
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        pictures, clip = make_inputs(Path(folder), args.pictures, args.frames, args.gop)
        order = [(round_, configuration) for round_ in range(args.rounds)
                 for configuration in (configurations if round_ % 2 == 0 else configurations[::-1])]
        for round_, (kind, mode, settings) in order:
            out = Path(folder) / "out"
            shutil.rmtree(out, ignore_errors=True)
            config = {"kind": kind, "mode": mode, "out": str(out), "warm_up": str(pictures[0]),
                      "inputs": [str(p) for p in pictures] if kind == "pictures" else [str(clip)], **settings}
            load = load_average()
            run = {"kind": kind, "mode": mode, **settings, "round": round_, "load_before": load,
                   **run_child("benchmarks.bench_ray", config)}
            runs.append(run)
            if "error" in run:
                print(f"{kind:<8} {mode:<5} {settings}: failed: {run['error']}", flush=True)
                continue
            unit = "pictures" if kind == "pictures" else "frames"
            steady = f", steady {run['steady_per_second']:.3f}/s" if "steady_per_second" in run else ""
            print(f"{round_} {kind:<8} {mode:<5} {json.dumps(settings):<32} {run['count']} {unit} in "
                  f"{run['total_s']:6.1f} s (start-up {run['startup_s']:.1f} s, job {run['job_s']:.1f} s): "
                  f"{run['per_second']:.3f}/s{steady}", flush=True)
    best: dict[str, dict[str, Any]] = {}
    for run in runs:
        if "error" in run:
            continue
        key = f"{run['kind']} {run['mode']} " + json.dumps({k: run[k] for k in ("workers", "segments") if k in run})
        if key not in best or run["total_s"] < best[key]["total_s"]:
            best[key] = {k: run[k] for k in ("total_s", "startup_s", "job_s", "per_second", "steady_per_second",
                                             "round", "load_before") if k in run}
    for key, run in best.items():
        print(f"best  {key:<50} {run['total_s']:6.1f} s: {run['per_second']:.3f}/s", flush=True)
    report = {
        "benchmark": "ray",
        "inputs": {"pictures": args.pictures, "picture_size": list(PICTURE_SIZE), "faces_per_picture": 1,
                   "clip_frames": args.frames, "clip_size": list(CLIP_SIZE), "clip_fps": CLIP_FPS,
                   "keyframe_every": args.gop, "audio": "aac"},
        "pipeline": "retinaface detection (cost), random CodeFormer + ParseNet (official layouts), -w 0.5 -s 2, fp32, "
                    "tuned CPU runtime, H.264 CRF 18",
        "ray_cpus": MACHINE_CPUS,
        "runs": runs,
        "best": best,
        "machine": describe_machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    save_report(report, args.output)
    return report


if __name__ == "__main__":
    main()
