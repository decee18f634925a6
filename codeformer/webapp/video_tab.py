"""The Video tab: every face of every frame restored; the result keeps its audio and timing."""

from __future__ import annotations

from typing import Any

import gradio as gr

from codeformer.fidelity import DEFAULT_FIDELITY_WEIGHT
from codeformer.options import RestoreOptions
from codeformer.registry import DEFAULT_DETECTOR, available_detectors
from codeformer.video import VIDEO_EXTENSIONS
from codeformer.webapp.handlers import restore_video_upload
from codeformer.webapp.page import DEVICE_SLOT, UPLOAD_HEIGHT, TabContext, file_paths, progress_of, shown_in_page
from codeformer.webapp.requests import MAX_UPSCALE, page_request

__all__ = ["build"]


def build(context: TabContext) -> None:
    """The tab's controls and events (inside a ``gr.Tab``)."""
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            video_file = gr.File(label="Video", file_types=list(VIDEO_EXTENSIONS), elem_id="video-input",
                                 height=UPLOAD_HEIGHT)
            button = gr.Button("Restore video  (Ctrl+Enter)", variant="primary", elem_id="video-button")
            fidelity = gr.Slider(0.0, 1.0, value=DEFAULT_FIDELITY_WEIGHT, step=0.05, label="Fidelity",
                                 info="0 = best quality, 1 = most faithful to the input")
            upscale = gr.Slider(1, MAX_UPSCALE, value=RestoreOptions.upscale, step=1, label="Upscale")
            blend = gr.Slider(0.0, 1.0, value=RestoreOptions.blend, step=0.05, label="Blend",
                              info="how much of the restored face is used: 1 = all, lower keeps more of the original")
            with gr.Row():
                background = gr.Checkbox(label="Background enhance (Real-ESRGAN)", value=False)
                face_upsample = gr.Checkbox(label="Face upsample", value=False)
            detector = gr.Dropdown(available_detectors(), value=DEFAULT_DETECTOR, label="Face detector")
            center = gr.Checkbox(label="Only the face nearest the centre", value=False)
        with gr.Column(scale=3):
            message = gr.Markdown(elem_id="video-message", elem_classes=["message"])
            result = gr.Video(label="Restored video (download keeps the audio)", interactive=False,
                              buttons=["download"], elem_id="video-result")

    @shown_in_page
    def on_video(upload: Any, fidelity_weight: float, upscale_: float, blend_: float, bg: bool, face_up: bool,
                 detector_: str, only_center: bool, progress: gr.Progress = gr.Progress()) -> list[Any]:
        asked = page_request(context.runner.base, fidelity_weight=fidelity_weight, upscale=upscale_, blend=blend_,
                             background_enhance=bg, face_upsample=face_up, detector=detector_,
                             only_center_face=only_center, max_pixels=context.max_pixels)
        paths = file_paths(upload)
        outcome = context.runner.run(restore_video_upload, paths[0] if paths else None, asked,
                                     context.folders.new(), progress=progress_of(progress))
        return [outcome.message, str(outcome.path)]

    button.click(on_video, inputs=[video_file, fidelity, upscale, blend, background, face_upsample, detector, center],
                 outputs=[message, result], concurrency_id=DEVICE_SLOT, concurrency_limit=1, api_visibility="private",
                 scroll_to_output=True)
