"""Learning from a project's annotations (docs/backend.md#learning).

- `regions`: the learned region resolver (which label, if any, each object found gets).
- `trainer`: annotated images -> a new state, validated against the serving one on held-out
  tasks, promoted only when its panoptic quality is higher.
- `states`: the states of each project under MODEL_DIR (safetensors + JSON, atomic), what is
  served, pins and rollback.
- `annotations`: LS tasks with annotations -> training examples.
- `store`: the annotations the webhooks bring, kept per project for training.
- `scheduler`: `Trainer`, one background training per project at a time (one more queued).
"""
