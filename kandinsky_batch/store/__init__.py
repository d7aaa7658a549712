"""The status store: Redis hashes and the Lua scripts that move jobs between states (the schema's one owner)."""
