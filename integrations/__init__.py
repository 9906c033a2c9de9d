"""Bridges from csr-index to other systems (installed as ``csr_index.integrations``)."""
