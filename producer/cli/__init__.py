"""The CLI, `kandinsky-batch`: `main` registers every command (producer/cli/main.py); `base` holds
what the commands share (settings, console, spec flags, the SDK they talk to); one module per
command group.
"""

from producer.cli.main import main

__all__ = ["main"]
