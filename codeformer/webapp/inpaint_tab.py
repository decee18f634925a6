"""The Inpaint tab: paint the holes white with the brush on an aligned face, or upload faces already painted."""

from __future__ import annotations

from typing import Any

import gradio as gr

from codeformer.imageio import IMAGE_EXTENSIONS
from codeformer.webapp.handlers import inpaint_painted, inpaint_uploads
from codeformer.webapp.page import DEVICE_SLOT, TabContext, file_paths, picture_outputs, progress_of, show_notes, \
    shown_in_page

__all__ = ["build"]

BRUSH_SIZE = 24  # px on the 512 px canvas: a stroke about as wide as a scratch on an old photo


def build(context: TabContext) -> None:
    """The tab's controls and events (inside a ``gr.Tab``)."""
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("Upload an aligned face, paint the holes with the white brush, then press **Inpaint**. "
                        "Or upload faces already painted pure white (255, 255, 255).")
            editor = gr.ImageEditor(
                label="Aligned face: paint the holes white", type="numpy", image_mode="RGB",
                sources=["upload", "clipboard"], layers=False, transforms=(),
                brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed",
                               default_size=BRUSH_SIZE),
                eraser=gr.Eraser(default_size=BRUSH_SIZE), canvas_size=(512, 512), format="png",
                elem_id="inpaint-editor")
            painted_files = gr.File(label="Or: faces already painted", file_count="multiple",
                                    file_types=list(IMAGE_EXTENSIONS), elem_id="inpaint-files")
            button = gr.Button("Inpaint", variant="primary", elem_id="inpaint-button")
        with gr.Column(scale=3):
            inpainted = picture_outputs("inpaint", "Inpainted faces")

    @shown_in_page
    def on_inpaint(edited: Any, uploads: Any, progress: gr.Progress = gr.Progress()) -> list[Any]:
        paths = file_paths(uploads)
        if paths:
            outcome = context.runner.run(inpaint_uploads, paths, context.folders.new(),
                                         max_pixels=context.max_pixels, progress=progress_of(progress))
        else:
            composite = edited.get("composite") if isinstance(edited, dict) else None
            outcome = context.runner.run(inpaint_painted, composite, context.folders.new(),
                                         max_pixels=context.max_pixels, progress=progress_of(progress))
        show_notes(outcome.notes)
        return inpainted.values(outcome)

    button.click(on_inpaint, inputs=[editor, painted_files], outputs=inpainted.components, concurrency_id=DEVICE_SLOT,
                 concurrency_limit=1, api_visibility="private")
