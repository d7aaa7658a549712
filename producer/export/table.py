"""Per-sample parquet rows, written a row group at a time to a temp file (bounded memory)."""

from __future__ import annotations

import json
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from producer.export.samples import Sample

ROW_GROUP_ROWS = 1000
ROW_GROUP_BYTES = 64 * 1024 * 1024  # with images in the table, flush a row group before this much

COLUMNS: list[tuple[str, pa.DataType]] = [
    ("key", pa.string()),
    ("job_id", pa.string()),
    ("batch_id", pa.string()),
    ("index", pa.int64()),
    ("image_index", pa.int32()),
    ("caption", pa.string()),
    ("seed", pa.int64()),
    ("image_seed", pa.int64()),
    ("clip_score", pa.float64()),
    ("sha256", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("format", pa.string()),
    ("spec", pa.string()),  # JSON text: a spec's fields vary by mode
    ("models", pa.string()),  # JSON text: ids and revisions
]


def schema(with_images: bool) -> pa.Schema:
    fields = [pa.field(name, kind) for name, kind in COLUMNS]
    return pa.schema([*fields, pa.field("image", pa.binary())] if with_images else fields)


def row(sample: Sample) -> dict[str, Any]:
    info = sample.info
    out = {name: info.get(name) for name, _ in COLUMNS}
    out["seed"] = info["seed"] if isinstance(info["seed"], int) else None
    out["spec"] = json.dumps(info["spec"], ensure_ascii=False, sort_keys=True)
    out["models"] = json.dumps(info["models"], ensure_ascii=False, sort_keys=True)
    return out


class RowWriter:
    """Rows into a parquet file object; a row group goes out every ROW_GROUP_ROWS rows or BYTES of images."""

    def __init__(self, fh: IO[bytes], with_images: bool) -> None:
        self.with_images = with_images
        self.schema = schema(with_images)
        self._writer = pq.ParquetWriter(fh, self.schema, compression="zstd")
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, sample: Sample) -> None:
        values = row(sample)
        if self.with_images:
            values["image"] = sample.image
            self._bytes += len(sample.image)
        self._rows.append(values)
        if len(self._rows) >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
        self._rows, self._bytes = [], 0

    def close(self) -> None:
        """Write what is left and the footer (an empty shard still gets a valid, empty file)."""
        self._flush()
        self._writer.close()
