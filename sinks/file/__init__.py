"""File sink: JSON Lines files in one folder (``type: file``)."""

from sinks.file.config import FileConfig
from sinks.file.sink import FileSink

__all__ = ["FileConfig", "FileSink"]
