"""clsr: a reproducible PyTorch replication of CLSR (Zheng et al., WWW'22) and its baselines."""

__version__ = "0.1.0"

from clsr import runtime as _runtime  # noqa: E402

_runtime.set_openmp_wait_policy()  # before anything imports torch (clsr.runtime says why)
_runtime.flush_denormals()  # imports torch; before torch creates its worker threads (clsr.runtime says why)
