"""The web app assembled and served: the page's tabs, the queue, a server on this machine.

Offline: Gradio's analytics and version check are off, no share link unless asked for, server-side
rendering (which needs Node) off; the page's fonts and scripts come from the installed Gradio
package, so the page works without a network.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from codeformer.errors import CodeFormerError
from codeformer.imageio import DEFAULT_MAX_PIXELS
from codeformer.options import LoadOptions
from codeformer.webapp import colorize_tab, inpaint_tab, restore_tab, video_tab
from codeformer.webapp.cache import PipelineCache
from codeformer.webapp.worker import HandlerRunner, RestorationProcess
from codeformer.webapp.handlers import OutputFolders
from codeformer.webapp.page import TabContext, sample_pictures

__all__ = ["RunningApp", "build_app", "free_port", "launch_app", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # this machine only: the user's pictures never leave it unless asked
# How often and after how long Gradio deletes the copies it serves (seconds): an hour each.
GRADIO_CACHE_CLEANUP = (3600, 3600)
CSS = """
.message p { font-size: 1.05em; }
"""
# Ctrl+Enter (Cmd+Enter on a Mac) presses the visible tab's main button.
SHORTCUTS = """
<script>
document.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
  const button = [...document.querySelectorAll("button.primary")].find((b) => b.offsetParent !== null);
  if (button) { event.preventDefault(); button.click(); }
});
</script>
"""


def build_app(runner: HandlerRunner, *, output_root: str | os.PathLike[str],
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> gr.Blocks:
    """The app's page: one tab per task, their work done by ``runner`` (a :class:`PipelineCache` in this
    process, or a :class:`RestorationProcess`); ``output_root`` holds the files of recent requests."""
    context = TabContext(runner, OutputFolders(Path(output_root)), max_pixels)
    with gr.Blocks(title="CodeFormer", analytics_enabled=False, delete_cache=GRADIO_CACHE_CLEANUP) as app:
        gr.Markdown("## CodeFormer face restoration\nRuns on this computer: your pictures are not sent anywhere.")
        with gr.Tabs():
            for label, tab_id, tab in (("Restore", "restore", restore_tab), ("Video", "video", video_tab),
                                       ("Colorize", "colorize", colorize_tab), ("Inpaint", "inpaint", inpaint_tab)):
                with gr.Tab(label, id=tab_id):
                    tab.build(context)
    # One request at a time on the device; the rest wait in the queue with their position shown.
    app.queue(default_concurrency_limit=1)
    return app


@dataclass
class RunningApp:
    """A launched app: its address, and how to stop it."""

    app: gr.Blocks
    local_url: str
    share_url: str | None
    output_root: Path
    runner: HandlerRunner

    def close(self) -> None:
        self.app.close(verbose=False)
        self.runner.close()
        shutil.rmtree(self.output_root, ignore_errors=True)

    def serve_forever(self) -> None:
        """Block until Ctrl+C or SIGTERM (or the server stops), then close."""
        if threading.current_thread() is threading.main_thread():
            # A service manager stops with SIGTERM: close as on Ctrl+C, so the request files are removed.
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            while self.app.is_running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on now (the system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def serve(runner: HandlerRunner, *, host: str = DEFAULT_HOST, port: int | None = None, share: bool = False,
          max_pixels: int | None = DEFAULT_MAX_PIXELS) -> RunningApp:
    """Build the app on ``runner`` and start serving it in the background; see :class:`RunningApp`."""
    output_root = Path(tempfile.mkdtemp(prefix="codeformer-web-"))
    try:
        app = build_app(runner, output_root=output_root, max_pixels=max_pixels)
        _, local_url, share_url = app.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
            inbrowser=False, show_error=False, ssr_mode=False, pwa=False, mcp_server=False,
            allowed_paths=[str(output_root), *(str(path) for path in sample_pictures())], footer_links=["api"],
            theme=gr.themes.Default(), css=CSS, head=SHORTCUTS,
        )
    except OSError as error:
        shutil.rmtree(output_root, ignore_errors=True)
        where = f"{host}:{port}" if port is not None else f"{host} (ports 7860-7959)"
        logger.debug("launch failed: %s", error)
        runner.close()
        raise CodeFormerError(f"cannot listen on {where}: the port is taken or not allowed; choose another port") \
            from None
    except BaseException:
        shutil.rmtree(output_root, ignore_errors=True)
        runner.close()
        raise
    return RunningApp(app, local_url, share_url, output_root, runner)



def launch_app(*, host: str = DEFAULT_HOST, port: int | None = None, share: bool = False, device: str = "auto",
               precision: str = "fp32", weights_dir: str | os.PathLike[str] | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, in_process: bool = False) -> RunningApp:
    """Serve the app with the real networks (loaded on first use). A bad device or precision fails here.

    The networks run in a child process (:class:`RestorationProcess`), so the page, uploads and the
    queue answer while they work; ``in_process``: in the server's own process instead (debugging).
    """
    from codeformer.device import resolve_device
    from codeformer.precision import resolve_precision

    base = LoadOptions(device=device, precision=precision, weights_dir=weights_dir)
    resolve_precision(base.precision, resolve_device(base.device))
    runner: HandlerRunner = PipelineCache(base=base) if in_process else RestorationProcess(base=base)
    return serve(runner, host=host, port=port, share=share, max_pixels=max_pixels)
