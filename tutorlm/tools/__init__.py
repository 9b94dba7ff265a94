"""Tools a model may call while it writes: Python code blocks run in a sandbox (tutorlm/tools/sandbox.py)."""
