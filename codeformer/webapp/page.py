"""What every tab of the page shares: the output panel, errors as one line in the page, progress, uploads.

:class:`TabContext` is what a tab module's ``build`` gets: what runs the handlers, the folders for
request files, the pixel limit and the one queue slot every event that runs networks shares.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from codeformer.webapp.handlers import OutputFolders, PictureOutcome, ProgressFn
from codeformer.webapp.requests import phrase_failure
from codeformer.webapp.worker import HandlerRunner

__all__ = ["DEVICE_SLOT", "UPLOAD_HEIGHT", "PictureOutputs", "TabContext", "file_paths", "picture_outputs",
           "progress_of", "sample_pictures", "show_notes", "shown_in_page"]


GALLERY_HEIGHT = 320  # px: a row of faces and the start of the next (it scrolls); Gradio's default leaves a gap
UPLOAD_HEIGHT = 150  # px: the upload box; Gradio's default pushes the button below a laptop screen's fold
# The sample photos of a checkout (inputs/whole_imgs), offered as examples to click when present.
SAMPLES_FOLDER = Path(__file__).resolve().parents[2] / "inputs" / "whole_imgs"
DEVICE_SLOT = "serialised"  # the queue slot every event that runs networks shares: one request on the device


@dataclass(frozen=True)
class TabContext:
    """What the tabs' events need."""

    runner: HandlerRunner  # a PipelineCache (this process) or a RestorationProcess (a child process)
    folders: OutputFolders
    max_pixels: int | None


def shown_in_page(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Errors become one line in the page (never a traceback); unexpected ones are logged in full."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:  # one line in the page; the log gets an unexpected one's traceback
            raise gr.Error(phrase_failure(error), duration=None, print_exception=False) from None

    return wrapper


def sample_pictures() -> list[Path]:
    """The sample photos to offer (none when the package is installed without the repository's inputs)."""
    if not SAMPLES_FOLDER.is_dir():
        return []
    return sorted(path for path in SAMPLES_FOLDER.iterdir() if path.suffix.lower() in (".jpg", ".png"))


def progress_of(progress: gr.Progress) -> ProgressFn:
    def report(fraction: float, description: str) -> None:
        progress(fraction, desc=description)

    return report


def show_notes(notes: Sequence[str]) -> None:
    for note in notes:
        gr.Warning(note)


def file_paths(files: Any) -> list[str]:
    """Gradio's value of a File component (None, one path or a list) as a list of paths."""
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [str(files)]
    return [str(getattr(file, "name", file)) for file in files]


@dataclass
class PictureOutputs:
    """The output panel every picture tab shows: message, picker, comparison, faces, downloads."""

    message: Any
    picker: Any
    comparison: Any
    gallery: Any
    downloads: Any
    state: Any
    components: list[Any] = field(default_factory=list)

    def values(self, outcome: PictureOutcome) -> list[Any]:
        # Keyed by position: two uploads may share a name.
        choices = [(result.name, str(index)) for index, result in enumerate(outcome.results)]
        pairs = {str(index): (str(result.before), str(result.after)) for index, result in enumerate(outcome.results)}
        first = outcome.results[0]
        return [
            outcome.message,
            gr.Dropdown(choices=choices, value="0", visible=len(choices) > 1),
            (str(first.before), str(first.after)),
            [(str(path), caption) for path, caption in outcome.faces],
            [str(result.download) for result in outcome.results],
            pairs,
        ]


def picture_outputs(tab: str, gallery_label: str) -> PictureOutputs:
    """The output panel of the picture tab ``tab`` (its elements' ids start with it)."""
    message = gr.Markdown(elem_id=f"{tab}-message", elem_classes=["message"])
    picker = gr.Dropdown(label="Compare", choices=[], visible=False, interactive=True)
    comparison = gr.ImageSlider(label="Before / after", type="filepath", format="png", elem_id=f"{tab}-comparison",
                                interactive=False, buttons=["fullscreen"])
    gallery = gr.Gallery(label=gallery_label, columns=4, fit_columns=False, height=GALLERY_HEIGHT, format="png",
                         elem_id=f"{tab}-faces", interactive=False)
    downloads = gr.File(label="Download (full resolution PNG)", file_count="multiple", interactive=False,
                        elem_id=f"{tab}-downloads")
    state = gr.State({})
    picker.change(lambda name, pairs: pairs.get(name), inputs=[picker, state], outputs=comparison, queue=False,
                  api_visibility="private")
    outputs = PictureOutputs(message, picker, comparison, gallery, downloads, state)
    outputs.components = [message, picker, comparison, gallery, downloads, state]
    return outputs

