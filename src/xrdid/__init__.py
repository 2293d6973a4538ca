"""xrdid: identify materials from measured powder X-ray diffraction patterns."""

from __future__ import annotations

__version__ = "0.1.0"
