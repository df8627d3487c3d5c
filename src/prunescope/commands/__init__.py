"""CLI commands beyond `study` and `train-demo`, one module per feature; each decorates `cli.app`."""
