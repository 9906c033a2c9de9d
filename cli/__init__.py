"""The ``csr-index`` command line (installed as ``csr_index.cli``)."""
