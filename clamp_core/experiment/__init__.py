"""Studies built from many training and evaluation runs: `clamp experiment few-shot` (CLAMP
pretraining vs scratch on few demos of held-out tasks; docs/experiments.md)."""
