"""Experiments that combine the steps: a study of one spec over variants, sweeps over specs."""
