"""What the machine is and how to time on it: CPU caches, GPU facts, cache flushes, timers and the
interleaved measurement core.

Below both `formats` (whose `auto` times candidate layers) and `latency` (which times whole variants);
it imports neither: what only the native kernels know is passed in by the caller.
"""
