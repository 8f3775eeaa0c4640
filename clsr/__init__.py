"""clsr: a reproducible PyTorch replication of CLSR (Zheng et al., WWW'22) and its baselines."""

__version__ = "0.1.0"
