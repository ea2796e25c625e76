"""Learning from a project's annotations (docs/learning.md).

- `regions`: the learned region resolver (which label, if any, each object found gets).
- `trainer`: annotated images -> a new state, validated against the serving one on held-out
  tasks, promoted only when its panoptic quality is higher.
- `states`: the states of each project under MODEL_DIR (safetensors + JSON, atomic), what is
  served, pins and rollback.
- `annotations`: LS tasks with annotations -> training examples.
"""
