"""``--model PATH.onnx``: other tools' face restoration files (facefusion's names and interface) and our exports.

Small random GPEN, RestoreFormer++ and CodeFormer networks are exported with facefusion's input and
output names (``input``, ``weight`` for CodeFormer, ``output``) and run through the command line and
the library; their faces equal the torch networks' within one level. The CodeFormer graph is the one
``codeformer export onnx`` writes for the session's small checkpoint, shared with tests/test_onnx_export.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import codeformer  # noqa: E402
from checkpoint_factory import (  # noqa: E402
    TINY_CONFIG,
    cached_small_codeformer_checkpoint,
    cached_small_codeformer_onnx,
)
from codeformer.archs import (  # noqa: E402
    GPEN,
    GPENConfig,
    RestoreFormerPP,
    RestoreFormerPPConfig,
    build_codeformer,
)
from codeformer.face.alignment import CROP_TEMPLATES, gpen_template  # noqa: E402
from codeformer.network_restorer import NetworkRestorer  # noqa: E402
from codeformer.onnx_export import OnnxRestorer, export_onnx  # noqa: E402
from codeformer.restorer import FaceRestorer, ffhq_template  # noqa: E402
from codeformer.weights import load_state_dict  # noqa: E402
from test_face_archs import random_gpen_state, random_restoreformer_state  # noqa: E402
from test_pipeline import picture  # noqa: E402

GPEN_256 = GPENConfig(size=256, channel_multiplier=1, narrow=1 / 16, style_dim=32, n_mlp=2)
RESTOREFORMER = RestoreFormerPPConfig(ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1, z_channels=32,
                                      embed_dim=32, n_embed=64)
TINY_SIDE = 64  # crops of the small CodeFormer (checkpoint_factory.TINY_CONFIG)


def _strip_metadata(source: Path, target: Path) -> Path:
    """The same graph without our metadata, as another tool's file would come."""
    import onnx

    model = onnx.load(str(source))
    del model.metadata_props[:]
    # The bytes as onnx.save would write them, without its pass over the tensors looking for external data.
    target.write_bytes(model.SerializeToString())
    return target


def ort_threads() -> int:
    """ONNX Runtime's threads: as many as torch's, which the suite shares out between its worker processes
    (tests/conftest.py); by default each session would spin a thread per core."""
    return torch.get_num_threads()


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.nn.Module]:
    gpen = GPEN(GPEN_256)
    gpen.load_state_dict(random_gpen_state(GPEN_256))
    restoreformer = RestoreFormerPP(RESTOREFORMER)
    restoreformer.load_state_dict(random_restoreformer_state(RESTOREFORMER))
    checkpoint = cached_small_codeformer_checkpoint(tmp_path_factory, TINY_CONFIG)
    codeformer_net = build_codeformer(load_state_dict(checkpoint))
    assert codeformer_net.config == TINY_CONFIG
    return {"gpen": gpen.eval(), "restoreformer": restoreformer.eval(), "codeformer": codeformer_net}


@pytest.fixture(scope="module")
def graphs(networks: dict[str, torch.nn.Module], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx_models")
    ours = {name: export_onnx(networks[name], folder / f"ours_{name}.onnx", input_size=input_size)
            for name, input_size in (("gpen", None), ("restoreformer", 512))}
    # The same weights as networks["codeformer"] (the session's small checkpoint), exported by the command.
    ours["codeformer"] = cached_small_codeformer_onnx(tmp_path_factory, TINY_CONFIG)
    # facefusion's file names: the program knows their templates by name.
    theirs = {
        "gpen_bfr_256": _strip_metadata(ours["gpen"], folder / "gpen_bfr_256.onnx"),
        "restoreformer_plus_plus": _strip_metadata(ours["restoreformer"], folder / "restoreformer_plus_plus.onnx"),
        "codeformer": _strip_metadata(ours["codeformer"], folder / "codeformer.onnx"),
        "unknown": _strip_metadata(ours["gpen"], folder / "my_model.onnx"),
    }
    return {**{f"ours_{name}": path for name, path in ours.items()}, **theirs}


@pytest.fixture(scope="module")
def facefusion_restorers(graphs: dict[str, Path]) -> dict[str, OnnxRestorer]:
    """OnnxRestorers of facefusion's files, by file stem (a session of a large graph takes a while to optimise)."""
    return {name: OnnxRestorer(graphs[name], threads=ort_threads())
            for name in ("gpen_bfr_256", "restoreformer_plus_plus", "codeformer")}


def _within_one_level(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(a, b):
        assert x.shape == y.shape and np.abs(x.astype(int) - y.astype(int)).max() <= 1


def test_the_graphs_have_facefusions_interface(graphs: dict[str, Path]) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(graphs["codeformer"]), providers=["CPUExecutionProvider"])
    inputs = {spec.name: spec.type for spec in session.get_inputs()}
    assert inputs == {"input": "tensor(float)", "weight": "tensor(double)"}
    assert [spec.name for spec in session.get_outputs()] == ["output"]
    gpen = onnxruntime.InferenceSession(str(graphs["gpen_bfr_256"]), providers=["CPUExecutionProvider"])
    assert [spec.name for spec in gpen.get_inputs()] == ["input"] and gpen.get_inputs()[0].shape == [1, 3, 256, 256]


def test_size_and_template_come_from_the_graph_and_its_name(graphs: dict[str, Path],
                                                            facefusion_restorers: dict[str, OnnxRestorer]) -> None:
    gpen_ours = OnnxRestorer(graphs["ours_gpen"])
    assert (gpen_ours.input_size, gpen_ours.template_name) == (256, "gpen")
    np.testing.assert_allclose(gpen_ours.template, np.array(gpen_template(256)), atol=1e-9)
    gpen_theirs = facefusion_restorers["gpen_bfr_256"]  # facefusion aligns this file with arcface_128
    assert gpen_theirs.template_name == "arcface_128"
    np.testing.assert_allclose(gpen_theirs.template, CROP_TEMPLATES["arcface_128"] * 256)
    restoreformer = facefusion_restorers["restoreformer_plus_plus"]
    assert (restoreformer.input_size, restoreformer.template_name) == (512, "ffhq_512")
    np.testing.assert_allclose(restoreformer.template, ffhq_template(512))
    with pytest.raises(codeformer.OptionError, match="my_model.onnx is not a file this program knows"):
        OnnxRestorer(graphs["unknown"])
    assert OnnxRestorer(graphs["unknown"], template="ffhq_512").template_name == "ffhq_512"


def test_onnx_faces_equal_the_torch_networks_within_one_level(
    networks: dict[str, torch.nn.Module], facefusion_restorers: dict[str, OnnxRestorer]
) -> None:
    gpen = NetworkRestorer(networks["gpen"], name="gpen", input_size=256, template=np.array(gpen_template(256)),
                           forward=lambda net, x: net(x), device="cpu")
    crops = [picture(256, 256, seed=seed) for seed in (1, 2, 3)]
    _within_one_level(facefusion_restorers["gpen_bfr_256"].restore_crops(crops), gpen.restore_crops(crops))
    restoreformer = NetworkRestorer(networks["restoreformer"], name="rf", input_size=512, template=ffhq_template(512),
                                    forward=lambda net, x: net(x)[0], device="cpu")
    big = [picture(512, 512, seed=4)]
    _within_one_level(facefusion_restorers["restoreformer_plus_plus"].restore_crops(big),
                      restoreformer.restore_crops(big))
    torch_codeformer = FaceRestorer(networks["codeformer"], "cpu")
    small = [picture(TINY_SIDE, TINY_SIDE, seed=5), picture(TINY_SIDE, TINY_SIDE, seed=6)]
    onnx_codeformer = facefusion_restorers["codeformer"]
    for weight in (0.0, 0.3, 1.0):  # the weight goes in as float64, live
        _within_one_level(onnx_codeformer.restore_crops(small, fidelity_weight=weight),
                          torch_codeformer.restore_crops(small, fidelity_weight=weight))


def test_the_command_line_runs_onnx_files_end_to_end(graphs: dict[str, Path], tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    from codeformer.cli import restore_main
    from codeformer.imageio import read_image, write_image

    faces = tmp_path / "faces"
    write_image(faces / "a.png", picture(TINY_SIDE, TINY_SIDE, seed=7))
    out = tmp_path / "out"
    assert restore_main(["--model", str(graphs["codeformer"]), "--has_aligned", "-w", "0.3", "-i", str(faces),
                         "-o", str(out), "--device", "cpu", "-q"]) == 0
    # Compared bit for bit: the same session settings as the command's (ONNX Runtime's default threads).
    expected = OnnxRestorer(graphs["codeformer"]).restore_crops([read_image(faces / "a.png").bgr],
                                                                 fidelity_weight=0.3)[0]
    np.testing.assert_array_equal(read_image(out / "restored_faces" / "a.png").bgr, expected)
    # A file the program does not know: one line that says to give its template.
    write_image(tmp_path / "big" / "b.png", picture(256, 256, seed=8))
    assert restore_main(["--model", str(graphs["unknown"]), "--has_aligned", "-i", str(tmp_path / "big"),
                         "-o", str(tmp_path / "out2"), "--device", "cpu", "-q"]) == 1
    err = capfd.readouterr().err
    assert err.startswith("error: --template: my_model.onnx is not a file this program knows: say which alignment "
                          "template its crops use (gpen, ffhq_512, arcface_128)")
    assert restore_main(["--model", str(graphs["unknown"]), "--template", "ffhq_512", "--has_aligned", "-i",
                         str(tmp_path / "big"), "-o", str(tmp_path / "out3"), "--device", "cpu", "-q"]) == 0


def test_whole_pictures_with_an_onnx_model_match_the_torch_model(networks: dict[str, torch.nn.Module],
                                                                 graphs: dict[str, Path]) -> None:
    from test_pipeline import FakeDetector

    onnx_pipe = codeformer.load_pipeline(graphs["ours_gpen"], detector=None, device="cpu")
    onnx_pipe.detector = FakeDetector()
    torch_pipe = codeformer.load_pipeline(graphs["ours_gpen"], detector=None, device="cpu")
    torch_pipe.restorer = NetworkRestorer(networks["gpen"], name="gpen", input_size=256,
                                          template=np.array(gpen_template(256)), forward=lambda net, x: net(x),
                                          device="cpu")
    torch_pipe.detector = FakeDetector()
    image = picture(300, 200)
    from_onnx, from_torch = onnx_pipe.restore(image), torch_pipe.restore(image)
    assert len(from_onnx.faces) == 2
    _within_one_level([face.restored for face in from_onnx.faces], [face.restored for face in from_torch.faces])
    assert np.abs(from_onnx.image.astype(int) - from_torch.image.astype(int)).max() <= 2
