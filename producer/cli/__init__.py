"""The CLI, `kandinsky-batch`: `main.py` registers every command and is the entry point; `base.py`
holds what the commands share (settings, console, spec flags, the SDK they talk to); one module
per command group. Nothing is imported here, so a command module and `main` never import each
other through the package.
"""
