"""The web page for artists (``cloak app``): cloak images in a browser, on this computer, without a terminal.

``launch(model, host, port, share, device)`` loads the model and serves the page; the handlers behind it are plain
functions in ``gradio_app.handlers``. Importing this package loads no model.
"""

from __future__ import annotations

from gradio_app.app import build_app, launch, serve

__all__ = ["build_app", "launch", "serve"]
