"""`rewind report`: a sweep dir as one self-contained HTML page (rewind.report.html)."""

from .html import REPORT_FILE, load, render, write

__all__ = ["REPORT_FILE", "load", "render", "write"]
