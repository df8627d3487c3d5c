"""Small helpers shared by several steps: progress bars, heap trimming."""
