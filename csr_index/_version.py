"""The release of csr-index (also in pyproject.toml)."""

__version__ = "0.3.0"
