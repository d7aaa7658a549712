"""The HTTP API: asynchronous submission for services that hold a URL and a key, not Redis."""
