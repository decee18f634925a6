"""The Restore tab: pictures (whole, or aligned crops) with the command line's options; also the ``/restore`` API."""

from __future__ import annotations

from typing import Any

import gradio as gr

from codeformer.color import GRAY_MODES
from codeformer.fidelity import DEFAULT_FIDELITY_WEIGHT
from codeformer.imageio import IMAGE_EXTENSIONS
from codeformer.options import RestoreOptions
from codeformer.registry import DEFAULT_DETECTOR, DEFAULT_MODEL, available_detectors
from codeformer.webapp.handlers import restore_api, restore_uploads
from codeformer.webapp.page import DEVICE_SLOT, UPLOAD_HEIGHT, TabContext, file_paths, picture_outputs, progress_of, \
    sample_pictures, show_notes, shown_in_page
from codeformer.webapp.requests import MAX_UPSCALE, page_request, restoration_models, supports_fidelity

__all__ = ["build"]


def build(context: TabContext) -> None:
    """The tab's controls and events (inside a ``gr.Tab``)."""
    models = restoration_models()
    # What a first visit needs is at the top: the upload, the button, samples to try, the main knob; the
    # other options fold away. The result is beside the button (below it on a phone, scrolled to).
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            files = gr.File(label="Pictures", file_count="multiple", file_types=list(IMAGE_EXTENSIONS),
                            elem_id="restore-input", height=UPLOAD_HEIGHT)
            restore_button = gr.Button("Restore  (Ctrl+Enter)", variant="primary", elem_id="restore-button")
            samples = sample_pictures()
            if samples:
                gr.Examples([[[str(path)]] for path in samples], inputs=[files], label="Or try a sample",
                            examples_per_page=len(samples))
            fidelity = gr.Slider(0.0, 1.0, value=DEFAULT_FIDELITY_WEIGHT, step=0.05, label="Fidelity",
                                 info="0 = best quality, 1 = most faithful to the input")
            with gr.Accordion("More options", open=False):
                has_aligned = gr.Checkbox(label="Aligned faces (512x512 crops, as made by codeformer crop)",
                                          value=False)
                upscale = gr.Slider(1, MAX_UPSCALE, value=RestoreOptions.upscale, step=1, label="Upscale",
                                    info="the result is the picture's size times this")
                blend = gr.Slider(0.0, 1.0, value=RestoreOptions.blend, step=0.05, label="Blend",
                                  info="how much of the restored face is used: 1 = all, lower keeps more of the "
                                       "original")
                with gr.Row():
                    background = gr.Checkbox(label="Background enhance (Real-ESRGAN)", value=False)
                    face_upsample = gr.Checkbox(label="Face upsample", value=False)
                detector = gr.Dropdown(available_detectors(), value=DEFAULT_DETECTOR, label="Face detector")
                model = gr.Dropdown(models, value=DEFAULT_MODEL, label="Model", visible=len(models) > 1)
            with gr.Accordion("Face choices", open=False):
                center = gr.Checkbox(label="Only the face nearest the centre", value=False)
                largest = gr.Checkbox(label="Only the largest face", value=False)
                numbers = gr.Textbox(value="", label="Only these faces", placeholder="e.g. 0, 2",
                                     info="faces are numbered left to right from 0")
                min_size = gr.Number(label="Minimum face size (pixels, 0 = any)", value=0, minimum=0)
                reference = gr.File(label="Only this person (a photo of them)", file_types=list(IMAGE_EXTENSIONS),
                                    elem_id="restore-reference")
                draw_box = gr.Checkbox(label="Outline the detected faces", value=False)
                grayscale = gr.Radio(list(GRAY_MODES), value=RestoreOptions.grayscale, label="Keep gray faces",
                                     info="auto: black-and-white pictures keep gray faces")
        with gr.Column(scale=3):
            restored = picture_outputs("restore", "Restored faces")
    # GFPGAN has no fidelity weight: the slider is shown greyed out while it is chosen.
    model.change(lambda name: gr.Slider(interactive=supports_fidelity(name)), inputs=model, outputs=fidelity,
                 queue=False, api_visibility="private")
    # In the order of the API's parameters below.
    option_inputs = [fidelity, upscale, has_aligned, background, face_upsample, detector, model, center, draw_box,
                     grayscale, largest, numbers, min_size, blend, reference]

    def request(*values: Any):
        names = ("fidelity_weight", "upscale", "has_aligned", "background_enhance", "face_upsample", "detector",
                 "model", "only_center_face", "draw_box", "grayscale", "largest_face", "face_index", "min_face_size",
                 "blend", "reference_face")
        asked = dict(zip(names, values))
        paths = file_paths(asked["reference_face"])
        asked["reference_face"] = paths[0] if paths else None
        return page_request(context.runner.base, **asked, max_pixels=context.max_pixels)

    @shown_in_page
    def on_restore(uploads: Any, fidelity_weight: float, upscale_: float, aligned: bool, bg: bool, face_up: bool,
                   detector_: str, model_: str, only_center: bool, box: bool, gray: str, largest_: bool,
                   numbers_: str, min_size_: float, blend_: float, reference_: Any,
                   progress: gr.Progress = gr.Progress()) -> list[Any]:
        asked = request(fidelity_weight, upscale_, aligned, bg, face_up, detector_, model_, only_center, box, gray,
                        largest_, numbers_, min_size_, blend_, reference_)
        outcome = context.runner.run(restore_uploads, file_paths(uploads), asked, context.folders.new(),
                                     progress=progress_of(progress))
        show_notes(outcome.notes)
        return restored.values(outcome)

    restore_button.click(on_restore, inputs=[files, *option_inputs], outputs=restored.components,
                         concurrency_id=DEVICE_SLOT, concurrency_limit=1, api_visibility="private",
                         scroll_to_output=True)

    # The HTTP API: one picture and the same options in, the full-resolution PNG out.
    api_picture = gr.File(label="picture", file_types=list(IMAGE_EXTENSIONS), visible=False)
    api_result = gr.File(label="restored picture", visible=False)
    api_trigger = gr.Button(visible=False)

    @shown_in_page
    def restore(picture: str, fidelity_weight: float = DEFAULT_FIDELITY_WEIGHT, upscale: float = RestoreOptions.upscale,
                has_aligned: bool = False, background_enhance: bool = False, face_upsample: bool = False,
                detector: str = DEFAULT_DETECTOR, model: str = DEFAULT_MODEL, only_center_face: bool = False,
                draw_box: bool = False, grayscale: str = RestoreOptions.grayscale, largest_face: bool = False,
                face_index: str = "", min_face_size: float = 0.0, blend: float = RestoreOptions.blend,
                reference_face: str | None = None) -> str:
        asked = request(fidelity_weight, upscale, has_aligned, background_enhance, face_upsample, detector, model,
                        only_center_face, draw_box, grayscale, largest_face, face_index, min_face_size, blend,
                        reference_face)
        paths = file_paths(picture)
        return str(context.runner.run(restore_api, paths[0] if paths else None, asked, context.folders.new()))

    api_trigger.click(restore, inputs=[api_picture, *option_inputs], outputs=api_result, api_name="restore",
                      concurrency_id=DEVICE_SLOT, concurrency_limit=1)
