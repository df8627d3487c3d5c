"""Evaluation: corpora and windows, the dense reference and behaviour metrics, offloaded evaluation."""
