"""Batch work without a running server: what `clipseg-label` does, as a library.

- `sources`: image references from folders, globs, file lists, Label Studio exports and URLs;
- `predict`: `predict`, the entry point of `clipseg-label predict`, and `run_predict`, its loop
  (load, predict, regions, results, one record per image);
- `ray_engine`: `predict --engine ray`, the same run as a Ray Data pipeline (optional extra);
- `project`: a Label Studio project's tasks as the input, predictions imported back (`--push`);
- `state`: the per-image records under `OUT/.state/`, written atomically, so a run resumes;
- `outputs`: tasks.json, coco.json and failures.json rebuilt from the records;
- `rank`: uncertainty ranking for active learning;
- `push`: predictions and scores into a Label Studio project (label-studio-sdk);
- `export_coco`: a Label Studio export -> COCO with exact masks;
- `exemplar_build`: an exemplar store from a Label Studio export, offline.

`backend.cli` only parses arguments and calls these.
"""

from __future__ import annotations
