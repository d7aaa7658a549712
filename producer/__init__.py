"""The producer side: the SDKs, the CLI, the HTTP API, exports, the gallery and reproduce scripts."""
