"""The web app: CodeFormer in the browser, on this machine, on the user's own files.

Start it with ``codeformer ui`` (or ``python app.py``); it listens on 127.0.0.1 unless told otherwise.
Tabs: **Restore** (whole pictures or aligned faces, several at once), **Video**, **Colorize** and
**Inpaint** (paint the holes white in the browser). The main action is also an HTTP API::

    from gradio_client import Client, handle_file
    client = Client(address_printed_by_codeformer_ui)
    path = client.predict(handle_file("photo.jpg"), fidelity_weight=0.7, upscale=2, api_name="/restore")

Modules: :mod:`~codeformer.webapp.requests` (the page's values as option objects),
:mod:`~codeformer.webapp.handlers` (plain functions: uploads in, previews and downloads out),
:mod:`~codeformer.webapp.cache` (loaded pipelines, one lock for the device),
:mod:`~codeformer.webapp.worker` (the handlers run in a child process, so the server answers), one module per tab,
:mod:`~codeformer.webapp.page` (what the tabs share) and :mod:`~codeformer.webapp.app` (assembly, serving).
"""

import os

# Gradio reads this variable itself before each analytics call (whatever the Blocks argument says),
# and its version check runs unless it is off: set it before gradio is imported, so the app never calls out.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from codeformer.webapp.app import RunningApp, build_app, free_port, launch_app, serve  # noqa: E402
from codeformer.webapp.cache import PipelineCache  # noqa: E402
from codeformer.webapp.handlers import (  # noqa: E402
    PREVIEW_MAX_SIDE,
    PictureOutcome,
    VideoOutcome,
    colorize_uploads,
    inpaint_painted,
    inpaint_uploads,
    restore_api,
    restore_uploads,
    restore_video_upload,
)
from codeformer.webapp.requests import PageRequest, PhrasedError, page_request, phrase, restoration_models, supports_fidelity  # noqa: E402
from codeformer.webapp.worker import HandlerRunner, RestorationProcess  # noqa: E402

__all__ = [
    "PREVIEW_MAX_SIDE",
    "HandlerRunner",
    "PageRequest",
    "PhrasedError",
    "PictureOutcome",
    "PipelineCache",
    "RestorationProcess",
    "RunningApp",
    "VideoOutcome",
    "build_app",
    "colorize_uploads",
    "free_port",
    "inpaint_painted",
    "inpaint_uploads",
    "launch_app",
    "page_request",
    "phrase",
    "restoration_models",
    "restore_api",
    "restore_uploads",
    "restore_video_upload",
    "serve",
    "supports_fidelity",
]
