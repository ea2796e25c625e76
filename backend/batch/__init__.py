"""Batch work without a running server: what `clipseg-label` does, as a library.

- `sources`: image references from folders, globs, file lists, Label Studio exports and URLs;
- `state`: per-image results under `OUT/.state/`, written atomically, so a run resumes;
- `predict`: the batch loop (load, predict, regions, results) and the outputs rebuilt from state;
- `rank`: uncertainty ranking for active learning;
- `push`: predictions and scores into a Label Studio project (label-studio-sdk);
- `exemplar_build`: an exemplar store from a Label Studio export, offline.

`backend.cli` only parses arguments and calls these.
"""
