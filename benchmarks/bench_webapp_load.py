"""The web app under load: do queued calls complete, and does the page answer while it restores?

Starts ``codeformer ui`` in its own process (random CodeFormer and ParseNet weights in the official
layouts, dlib's detector), then, at the same time: ``--clients`` threads each calling ``/restore``
once through ``gradio_client`` with its default settings (a 363x419 photo with two faces, from
scikit-image's astronaut), a 400-megapixel PNG bomb and a text file named ``.png`` (both must be
refused with their one-line messages), and a probe loading the page every half second. Records how
many calls returned their picture, each call's time, the refusals, and the page's load times while
restorations ran.

Usage, from the repository root::

    python -m benchmarks.bench_webapp_load [--clients 8]

Prints the numbers and writes ``benchmarks/results/webapp_load.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import describe_machine, load_average, save_report  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "webapp_load.json"
PHOTO_SIZE = (363, 419)  # width, height: the photo
PAGE_INTERVAL = 0.5  # seconds between page loads of the probe


def two_face_photo() -> np.ndarray:
    """363x419 BGR: the astronaut's head twice, side by side, on her photo's background."""
    from benchmarks.faces import astronaut_bgr

    astronaut = astronaut_bgr()
    head = cv2.resize(astronaut[20:240, 120:300], (170, 208), interpolation=cv2.INTER_AREA)
    photo = cv2.resize(astronaut[250:, :], PHOTO_SIZE, interpolation=cv2.INTER_AREA)
    photo[100:308, 8:178] = head
    photo[100:308, 185:355] = cv2.flip(head, 1)
    return photo


def png_bomb(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A valid 400-megapixel gray PNG of a few hundred kilobytes (rows of zeros compress to nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def write_weights(root: Path) -> Path:
    from benchmarks.bench_picture import random_weights_root

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from checkpoint_factory import write_codeformer_checkpoint

    write_codeformer_checkpoint(root / "CodeFormer" / "codeformer.pth")
    return random_weights_root(root)


def wait_for(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer at {url} within {timeout:.0f} s")


def page_load_seconds(url: str) -> float | None:
    started = time.perf_counter()
    try:
        urllib.request.urlopen(url, timeout=30).read()
    except OSError:
        return None
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--port", type=int, default=7931)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="bench-webapp-") as scratch:
        folder = Path(scratch)
        weights = write_weights(folder / "weights")
        photo = folder / "photo.jpg"
        cv2.imwrite(str(photo), two_face_photo())
        bomb, text = folder / "bomb.png", folder / "notes.png"
        png_bomb(bomb)
        text.write_text("not a picture\n")
        url = f"http://127.0.0.1:{args.port}/"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        server = subprocess.Popen([sys.executable, "-m", "codeformer", "ui", "--port", str(args.port),
                                   "--weights_dir", str(weights), "--device", "cpu"], cwd=REPO_ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(url, server)
            client = Client(url, verbose=False)
            # One call first: the networks load, so the timed calls measure restorations.
            started = time.perf_counter()
            client.predict(handle_file(str(photo)), detector="dlib", api_name="/restore")
            first = time.perf_counter() - started
            calls: list[dict[str, Any]] = []
            page_times: list[float | None] = []
            done = threading.Event()

            def call(kind: str, path: Path) -> None:
                begun = time.perf_counter()
                try:
                    result = Client(url, verbose=False).predict(handle_file(str(path)), detector="dlib",
                                                                 api_name="/restore")
                    outcome = {"ok": Path(result).is_file(), "error": None}
                except Exception as error:  # noqa: BLE001 - what the client saw is the measurement
                    outcome = {"ok": False, "error": f"{type(error).__name__}: {str(error).strip()[:300]}"}
                calls.append({"kind": kind, "seconds": round(time.perf_counter() - begun, 2), **outcome})

            def probe() -> None:
                while not done.is_set():
                    page_times.append(page_load_seconds(url))
                    done.wait(PAGE_INTERVAL)

            threads = [threading.Thread(target=call, args=("photo", photo)) for _ in range(args.clients)]
            threads += [threading.Thread(target=call, args=("bomb", bomb)), threading.Thread(target=call,
                                                                                              args=("text", text))]
            prober = threading.Thread(target=probe)
            load_before = load_average()
            started = time.perf_counter()
            prober.start()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            total = time.perf_counter() - started
            done.set()
            prober.join()
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    photos = [c for c in calls if c["kind"] == "photo"]
    loaded = [t for t in page_times if t is not None]
    report = {
        "machine": describe_machine(),
        "load_before": load_before,
        "clients": args.clients,
        "first_call_seconds": round(first, 2),
        "all_calls_seconds": round(total, 2),
        "photos_returned": sum(c["ok"] for c in photos),
        "photo_seconds": sorted(c["seconds"] for c in photos),
        "refusals": {c["kind"]: c["error"] for c in calls if c["kind"] != "photo"},
        "failures": [c["error"] for c in photos if not c["ok"]],
        "page_loads": len(page_times),
        "page_failed": sum(t is None for t in page_times),
        "page_seconds_median": round(statistics.median(loaded), 3) if loaded else None,
        "page_seconds_max": round(max(loaded), 3) if loaded else None,
    }
    print(f"{report['photos_returned']}/{args.clients} photos returned in {total:.1f} s "
          f"(first call, loading: {first:.1f} s)")
    print(f"page: {len(loaded)} loads, median {report['page_seconds_median']} s, max {report['page_seconds_max']} s, "
          f"{report['page_failed']} failed")
    for kind, error in report["refusals"].items():
        print(f"{kind}: {error}")
    for error in report["failures"]:
        print(f"failed: {error}")
    save_report(report, args.output)
    return 0 if report["photos_returned"] == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
