"""Label Studio ML backend, formats and CLI built on `clipseg`."""
