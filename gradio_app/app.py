"""The web page: a thin gradio layout over the plain handlers in ``gradio_app.handlers``.

Safe by default: served on 127.0.0.1 only (sharing a public link needs ``share=True``), one job at a time (queue
concurrency 1), no telemetry, nothing sent anywhere. Images reach the browser as the PNG files the library wrote
(file paths, never re-encoded: gradio's own image encoding is lossy WebP by default, which would strip the cloak).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from types import FrameType
from typing import Any

import gradio as gr

from cloak.errors import ConfigError
from cloak.imageio import SUPPORTED_SUFFIXES
from cloak.methods import METHODS
from cloak.presets import PRESETS
from gradio_app import handlers
from gradio_app.handlers import Backend

MAX_UPLOAD = "1gb"  # per uploaded file (a zip of many images)
LOOPBACK = ("127.0.0.1", "localhost", "::1")

INTRO = """# Protect your artwork from AI style copying
Add your images, choose how strong the protection should be, and press **Protect my images**.
The page adds a small, carefully computed change (a "cloak") to each picture that makes it harder for AI image
models to learn your style from it. It is not a guarantee: in our tests it weakens copying of some styles and not of
others, and blurring the pictures can undo it. A model trained on protected pictures still picks up their colours and
layout; what it paints comes out under a texture, and a copier who filters that texture away gets back much, for some
styles all, of what the cloak took. Your files stay on this computer: nothing is uploaded anywhere."""

COMPARISON = {"before": "Before", "after": "After (protected)", "difference": "The change, amplified"}
PRESET_LABELS = {"fast": "Fast", "default": "Default (recommended)", "strong": "Strong"}


def _preset_text() -> str:
    return "\n".join(f"- **{PRESET_LABELS.get(name, name)}**: {p.description}." for name, p in PRESETS.items())


def build_app(backend: Backend) -> gr.Blocks:
    """The page, wired to ``backend`` (loaded model). Every handler only reads ``backend``."""
    # gradio evaluates the handlers' annotations (typing.get_type_hints) to find its own special arguments: every
    # name in them must exist at run time in this module.

    def on_preset(preset: str) -> tuple[str, float, int]:
        p = PRESETS[preset]
        return p.method, p.eps, p.steps

    def on_estimate(
        files: list[str] | None, preset: str, method: str | None, eps: float | None, steps: int | None
    ) -> str:
        return handlers.estimate(backend, files, preset, method, eps, steps)

    def on_protect(
        files: list[str] | None,
        preset: str,
        method: str | None,
        eps: float | None,
        steps: int | None,
        seed: float | int | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's API)
    ) -> tuple[
        str,
        list[list[Any]],
        list[tuple[str, str]],
        str | None,
        str | None,
        str | None,
        str,
        str | None,
        list[str] | None,
        list[handlers.ItemResult],
    ]:
        try:
            report = handlers.protect_uploads(backend, files, preset, method, eps, steps, seed, progress=progress)
        except ConfigError as err:
            raise gr.Error(str(err)) from None
        done = [item for item in report.items if item.status == "done"]
        first = handlers.detail(done[0]) if done else (None, None, None, "")
        return (
            handlers.summary(report),
            handlers.results_table(report),
            handlers.gallery_items(report),
            *first,
            None if report.archive is None else str(report.archive),
            [str(item.output) for item in done] or None,
            done,
        )

    def on_select(
        done: list[handlers.ItemResult], evt: gr.SelectData
    ) -> tuple[str | None, str | None, str | None, str]:
        return handlers.detail(done[evt.index])

    image_types = sorted(SUPPORTED_SUFFIXES) + [".zip"]
    with gr.Blocks(title="Cloak: protect your artwork", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                files = gr.File(
                    label="1. Your images (PNG, JPEG, WebP, TIFF, BMP, GIF) or a .zip of them",
                    file_count="multiple",
                    file_types=image_types,
                    elem_id="uploads",
                )
                preset = gr.Radio(
                    [(PRESET_LABELS.get(name, name), name) for name in PRESETS],
                    value="default",
                    label="2. Protection strength",
                    elem_id="preset",
                )
                gr.Markdown(_preset_text())
                time_estimate = gr.Markdown("Add images to see how long they will take.", elem_id="estimate")
                with gr.Accordion("Advanced settings", open=False):
                    method = gr.Dropdown(
                        [(f"{name}: {cls.summary}", name) for name, cls in METHODS.items()],
                        value=PRESETS["default"].method,
                        label="Method",
                    )
                    eps = gr.Number(
                        PRESETS["default"].eps,
                        label="Budget: largest change per pixel, of 255",
                        minimum=1,
                        maximum=255,
                    )
                    steps = gr.Number(
                        PRESETS["default"].steps, label="Steps (more = stronger, slower)", precision=0, minimum=1
                    )
                    seed = gr.Number(0, label="Seed (the same seed gives the same files)", precision=0, minimum=0)
                    gr.Textbox(
                        backend.model,
                        label="Model (chosen when the page was started: `cloak app --model`)",
                        interactive=False,
                    )
                run = gr.Button("3. Protect my images", variant="primary", elem_id="protect")
            with gr.Column(scale=3):
                report_text = gr.Markdown(elem_id="summary")
                with gr.Row():
                    before, after, difference = (
                        gr.Image(
                            label=label,
                            type="filepath",
                            format="png",
                            interactive=False,
                            height=300,
                            buttons=["download", "fullscreen"],  # no "share": nothing leaves this computer
                            elem_id=key,
                        )
                        for key, label in COMPARISON.items()
                    )
                measures = gr.Markdown(elem_id="measures")
                with gr.Row():
                    archive = gr.File(
                        label="Download all (zip: images + .cloak.json records)",
                        interactive=False,
                        elem_id="download-all",
                    )
                    outputs = gr.File(
                        label="Download each image (PNG)",
                        file_count="multiple",
                        interactive=False,
                        elem_id="download-each",
                    )
                gallery = gr.Gallery(
                    label="All protected images: click one to compare it above",
                    format="png",
                    columns=8,
                    height=150,
                    fit_columns=False,
                    object_fit="contain",
                    allow_preview=False,
                    buttons=["download"],
                )
                table = gr.Dataframe(
                    headers=handlers.TABLE_HEADERS,
                    label="Results",
                    interactive=False,
                    wrap=True,
                    column_widths=["22%", "13%", "13%", "10%", "9%", "9%", "24%"],
                )
        done_state = gr.State([])

        preset.change(on_preset, preset, [method, eps, steps], queue=False)
        estimate_inputs = [files, preset, method, eps, steps]
        for trigger in (files.change, preset.change, method.change, eps.change, steps.change):
            trigger(on_estimate, estimate_inputs, time_estimate, queue=False, show_progress="hidden")
        run.click(
            on_protect,
            [files, preset, method, eps, steps, seed],
            [report_text, table, gallery, before, after, difference, measures, archive, outputs, done_state],
        )
        gallery.select(on_select, done_state, [before, after, difference, measures], queue=False)
    return demo


def serve(
    backend: Backend, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = True
) -> gr.Blocks:
    """Start the page for ``backend``; ``block=False`` returns once the server runs (tests use it)."""
    if share:
        print(
            "warning: --share makes this page reachable by anyone with the link, through gradio's servers.",
            file=sys.stderr,
        )
    elif host not in LOOPBACK:
        print(f"warning: serving on {host}: other computers on the network can use this page.", file=sys.stderr)
    demo = build_app(backend)
    demo.queue(default_concurrency_limit=1, api_open=False)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,
        quiet=True,  # gradio's own lines tell Python users to set share=True in launch(); ours name --share
        inbrowser=False,
        max_file_size=MAX_UPLOAD,
        show_error=True,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        footer_links=[],
        theme=gr.themes.Default(primary_hue="indigo"),
    )
    print(f"the page is at {demo.local_url} (open it in your browser; Ctrl-C here stops it)", file=sys.stderr)
    if share and demo.share_url:
        print(f"public link: {demo.share_url}", file=sys.stderr)
    if block:
        demo.block_thread()
    return demo


def launch(
    model: str, host: str = "127.0.0.1", port: int | None = None, share: bool = False, device: str = "auto"
) -> None:
    """Load ``model`` and serve the page until interrupted (``cloak app``).

    Args:
        model: ``testbed``, a hub id, a diffusers folder or a checkpoint file; loaded once, here.
        host: interface to listen on; 127.0.0.1 (default) keeps the page on this computer.
        port: TCP port; None = gradio's default (7860, or the next free one).
        share: also publish a temporary public link through gradio's servers (off by default).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        ModelNotFoundError: the model's weights are neither cached nor reachable (one line that says what to do).
        ConfigError: unknown device or model kind.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, also from gradio's module-level helpers
    print(f"loading {model} and timing it for the page's time estimates (a minute or so on a CPU)...", file=sys.stderr)
    backend = handlers.load_backend(model, device)
    # Closing the terminal (SIGHUP) or `kill` (SIGTERM) would end the process without running `finally`, leaving
    # every upload and result on disk; turned into the exit Ctrl-C already is, they clean up the same way.
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _interrupt)
    try:
        serve(backend, host=host, port=port, share=share, block=True)
    finally:
        shutil.rmtree(backend.work_root, ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
