"""diffusers and transformers log through the root logger: one format (JSON or text) for every line.

Each library otherwise puts its own handler and format on its loggers, and transformers draws a
progress bar per weight load. This must run before diffusers is imported: importing it already
logs (a missing optional backend, for one).
"""

from __future__ import annotations

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging


def route_library_logs() -> None:
    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
        library.disable_progress_bar()
