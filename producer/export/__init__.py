"""Export a batch's images as a dataset: WebDataset shards (img2dataset's layout), parquet, or files.

`export_batch(settings, batch_id, to, format)` in Python, `kandinsky-batch export` on the CLI.
"""

from producer.export.batch import export_batch
from producer.export.options import ExportError, ExportOptions, ExportSummary, Format

__all__ = ["ExportError", "ExportOptions", "ExportSummary", "Format", "export_batch"]
