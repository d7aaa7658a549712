"""The shared core: settings, the job schema, the Redis key schema and its store, storage, the wire format."""
