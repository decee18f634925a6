"""GPEN-BFR and RestoreFormer++ as models of the pipeline: names, files, templates, output sizes, blend.

The networks are small random ones in the official files' layouts (config read from the file), saved
under the names the registry looks for, so ``--model gpen_bfr_512`` and friends run end to end in
seconds. That the networks equal the originals is proven in ``test_face_archs.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import codeformer
from codeformer.archs import GPENConfig, RestoreFormerPPConfig
from codeformer.archs.restoreformer_pp import MODEL_PREFIX
from codeformer.face.alignment import FFHQ_TEMPLATE_5, TEMPLATES, estimate_alignment, gpen_template, transform_points
from codeformer.network_restorer import NetworkRestorer, truncated_crops
from codeformer.options import RestoreOptions
from codeformer.restoration import alignment_template
from codeformer.restorer import batch_to_crops
from test_face_archs import random_gpen_state, random_restoreformer_state
from test_pipeline import FakeDetector, picture

# Small stand-ins with the official files' structure: what the registry and the pipeline see is the same.
TINY_GPEN = {size: GPENConfig(size=size, channel_multiplier=1, narrow=1 / 16, style_dim=32, n_mlp=2)
             for size in (512, 1024)}
TINY_RESTOREFORMER = RestoreFormerPPConfig(ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1, z_channels=32,
                                           embed_dim=32, n_embed=64)


def _gpen_file(weights: Path, size: int) -> Path:
    path = weights / "gpen" / f"GPEN-BFR-{size}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_gpen_state(TINY_GPEN[size]), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("face_model_weights")
    for size in TINY_GPEN:
        _gpen_file(root, size)
    lightning = {"state_dict": {MODEL_PREFIX + name: value
                                for name, value in random_restoreformer_state(TINY_RESTOREFORMER).items()},
                 "epoch": 10}  # the official file is a Lightning checkpoint
    (root / "restoreformer").mkdir()
    torch.save(lightning, root / "restoreformer" / "RestoreFormer++.ckpt")
    return root


def _pipeline(weights: Path, model: str) -> codeformer.Pipeline:
    pipe = codeformer.load_pipeline(model, detector=None, device="cpu", weights_dir=weights)
    pipe.detector = FakeDetector()  # two faces at known places, no detector network
    return pipe


def test_the_new_models_are_offered_by_name() -> None:
    assert {"gpen_bfr_256", "gpen_bfr_512", "gpen_bfr_1024", "gpen_bfr_2048",
            "restoreformer_plus_plus"} <= set(codeformer.available_models())


@pytest.mark.parametrize("size", [512, 1024])
def test_gpen_restores_faces_at_its_own_size_and_template(weights: Path, size: int) -> None:
    pipe = _pipeline(weights, f"gpen_bfr_{size}")
    assert (pipe.restorer.input_size, pipe.restorer.supports_fidelity) == (size, False)
    np.testing.assert_allclose(pipe.restorer.template, gpen_template(size))
    result = pipe.restore(picture(300, 200), upscale=2)
    assert result.image.shape == (400, 600, 3)
    assert len(result.faces) == 2 and all(face.restored.shape == (size, size, 3) for face in result.faces)
    # The faces were pasted back: the picture changed around them and nowhere far from them.
    plain = np.asarray(torch.nn.functional.interpolate(torch.from_numpy(picture(300, 200)).permute(2, 0, 1)[None]
                                                       .float(), scale_factor=2, mode="bilinear")[0]
                       .permute(1, 2, 0).round().byte())
    changed = np.abs(result.image.astype(int) - plain.astype(int)).max(axis=2) > 8
    assert changed.mean() > 0.01
    with pytest.raises(codeformer.OptionError, match=f"gpen_bfr_{size} has no fidelity control"):
        pipe.restore(picture(300, 200), fidelity_weight=0.5)


def test_gpen_truncates_its_output_as_the_original_does() -> None:
    images = torch.tensor([[[[0.999]], [[-0.5]], [[0.2]]]])  # (1, 3, 1, 1): RGB
    # (y + 1) / 2 * 255: 254.87, 63.75, 153.0 -> truncated 254, 63, 153 (rounding would give 255, 64, 153)
    assert truncated_crops(images)[0][0, 0].tolist() == [153, 63, 254]  # BGR
    assert batch_to_crops(images)[0][0, 0].tolist() == [153, 64, 255]


def test_restoreformer_pp_loads_the_lightning_file_and_keeps_ffhq_alignment(weights: Path) -> None:
    pipe = _pipeline(weights, "restoreformer_plus_plus")
    assert pipe.restorer.input_size == 512 and not pipe.restorer.supports_fidelity
    np.testing.assert_allclose(pipe.restorer.template, FFHQ_TEMPLATE_5)
    crop = picture(512, 512, seed=3)
    first = pipe.restore(crop, has_aligned=True).image
    np.testing.assert_array_equal(first, pipe.restore(crop, has_aligned=True).image)  # no random noise
    assert first.shape == (512, 512, 3) and not np.array_equal(first, crop)


def test_dlib_landmarks_are_carried_into_gpens_tighter_crops(weights: Path) -> None:
    pipe = _pipeline(weights, "gpen_bfr_512")
    target = alignment_template(pipe.restorer, "dlib")
    ffhq_to_gpen = estimate_alignment(FFHQ_TEMPLATE_5, pipe.restorer.template)
    np.testing.assert_allclose(target, transform_points(ffhq_to_gpen, TEMPLATES["dlib"]))
    # The eye corners land around GPEN's eye centres, not FFHQ's.
    gpen_eyes = np.asarray(gpen_template(512))[:2]
    dlib_eyes = np.stack([target[0:2].mean(axis=0), target[2:4].mean(axis=0)])
    assert np.abs(np.sort(dlib_eyes[:, 0]) - np.sort(gpen_eyes[:, 0])).max() < 12


def test_blend_mixes_the_restored_face_with_the_unrestored_one(weights: Path) -> None:
    pipe = _pipeline(weights, "gpen_bfr_512")
    crop = picture(512, 512, seed=4)
    restored = pipe.restore(crop, has_aligned=True).image
    np.testing.assert_array_equal(pipe.restore(crop, has_aligned=True, blend=0.0).image, crop)
    half = pipe.restore(crop, has_aligned=True, blend=0.5)
    expected = np.rint((restored.astype(np.float32) + crop.astype(np.float32)) / 2).astype(np.uint8)
    np.testing.assert_array_equal(half.image, expected)
    assert half.faces[0].blend == 0.5
    # Whole pictures: a blended face lies between the unrestored picture and the fully restored one.
    image = picture(300, 200)
    full, none_, mixed = (pipe.restore(image, upscale=1, blend=b).image.astype(int) for b in (1.0, 0.0, 0.5))
    region = np.abs(full - none_).max(axis=2) > 30
    assert region.any()
    assert np.abs(mixed[region] - (full[region] + none_[region]) / 2).mean() < 3
    with pytest.raises(codeformer.OptionError, match="blend 1.5: must be a number from 0"):
        RestoreOptions(blend=1.5)


def test_the_command_line_takes_the_new_models_and_blend(weights: Path, tmp_path: Path) -> None:
    from codeformer.cli import restore_main
    from codeformer.imageio import read_image, write_image

    face = write_image(tmp_path / "in" / "face.png", picture(512, 512, seed=5))
    out = tmp_path / "out"
    assert restore_main(["--model", "gpen_bfr_512", "--has_aligned", "--blend", "0", "-i", str(face.parent),
                         "-o", str(out), "--weights_dir", str(weights), "--device", "cpu", "-q"]) == 0
    np.testing.assert_array_equal(read_image(out / "restored_faces" / "face.png").bgr, read_image(face).bgr)
    # The default output folder of a model without a fidelity weight is named after the model.
    from codeformer.jobs import Job
    from codeformer.options import LoadOptions

    photos = tmp_path / "photos"
    photos.mkdir()
    assert Job(f"{photos}/", LoadOptions("gpen_bfr_512")).output_root() == "results/photos_gpen_bfr_512"


def test_network_restorer_refuses_wrong_crops(weights: Path) -> None:
    restorer = NetworkRestorer.gpen_from_file(weights / "gpen" / "GPEN-BFR-512.pth", "cpu")
    with pytest.raises(ValueError, match=r"\(512, 512, 3\) uint8 BGR"):
        restorer.restore_crops([np.zeros((256, 256, 3), np.uint8)])
