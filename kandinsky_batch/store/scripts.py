"""The store's Lua scripts, read from `lua/*.lua` (package data) and filled in from the Python names.

Each script runs atomically in Redis, so batch counters always equal the sum of their jobs'
states. Every file opens with the KEYS and ARGV it takes. Before loading, each gets the field
names (`F`, `B`, `E`, `U`, `Q` from kandinsky_batch/keys.py) and the shared helpers of `common.lua`,
with the record layout's constants (kandinsky_batch/store/records.py) filled in. A script can
run others in its round trip (`auth_submit.lua`): it names them, and their text is pasted in.

The scripts address a batch's record shards by name (`rec_prefix .. shard`) when they expire or
keep them with their batch: one standalone Redis (or a primary with replicas) is the supported
deployment, not Redis Cluster.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from kandinsky_batch.keys import lua_prelude
from kandinsky_batch.store import records


def _read(name: str) -> str:
    return resources.files("kandinsky_batch.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


@cache
def lua(name: str) -> str:
    """The runnable text of `lua/{name}.lua`: field names, helpers and constants first."""
    constants = {
        "__SHARD__": records.SHARD_JOBS,
        "__REC__": records.RECORD_BYTES,
        "__EXISTS__": records.EXISTS,
        "__RECEIVED__": records.RECEIVED,
        "__LOW__": records.LOW,
        "__COUNTED__": records.COUNTED,
        "__HIGH__": records.HIGH,
    }
    text = lua_prelude() + _read("common") + _read(name)
    # A script that runs others in the same round trip names them `__SCRIPT_<name>__`: each is
    # pasted in as the body of a function of its own KEYS and ARGV.
    for inner in re.findall(r"__SCRIPT_(\w+?)__", text):
        text = text.replace(f"__SCRIPT_{inner}__", _read(inner))
    for token, value in constants.items():
        text = text.replace(token, str(value))
    return text
