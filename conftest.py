"""Root pytest configuration: notebooks collected by nbval run in tiny mode.

CLSR_TINY=1 makes every notebook's `clsr.pipeline.context()` use a tiny synthetic configuration in a
scratch folder (shared by the notebooks of one session), so nbval executes them in seconds and never
touches the real pipeline outputs. Kernels started by nbval inherit this environment.
"""
import os
import tempfile

os.environ.setdefault("CLSR_TINY", "1")
os.environ.setdefault("CLSR_TINY_DIR", tempfile.mkdtemp(prefix="clsr-nbval-"))
os.environ.setdefault("MPLBACKEND", "Agg")
