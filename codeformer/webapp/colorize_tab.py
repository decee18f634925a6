"""The Colorize tab: black-and-white or faded aligned faces in colour."""

from __future__ import annotations

from typing import Any

import gradio as gr

from codeformer.imageio import IMAGE_EXTENSIONS
from codeformer.webapp.handlers import colorize_uploads
from codeformer.webapp.page import DEVICE_SLOT, TabContext, file_paths, picture_outputs, progress_of, show_notes, \
    shown_in_page

__all__ = ["build"]


def build(context: TabContext) -> None:
    """The tab's controls and events (inside a ``gr.Tab``)."""
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            files = gr.File(label="Aligned faces (black-and-white or faded, 512x512)", file_count="multiple",
                            file_types=list(IMAGE_EXTENSIONS), elem_id="colorize-input")
            button = gr.Button("Colorize", variant="primary", elem_id="colorize-button")
        with gr.Column(scale=3):
            colorized = picture_outputs("colorize", "Colorized faces")

    @shown_in_page
    def on_colorize(uploads: Any, progress: gr.Progress = gr.Progress()) -> list[Any]:
        outcome = context.runner.run(colorize_uploads, file_paths(uploads), context.folders.new(),
                                     max_pixels=context.max_pixels, progress=progress_of(progress))
        show_notes(outcome.notes)
        return colorized.values(outcome)

    button.click(on_colorize, inputs=files, outputs=colorized.components, concurrency_id=DEVICE_SLOT,
                 concurrency_limit=1, api_visibility="private")
