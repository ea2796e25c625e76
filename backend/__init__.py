"""Label Studio ML backend, formats and CLI built on `clipseg`."""

from __future__ import annotations
