"""Holds glue.py, the local `evaluate` metric script (loaded by path, not imported as a module)."""
