"""segflow: image segmentation pipeline core library (no Prefect inside)."""

from __future__ import annotations

__version__ = "0.1.0"
