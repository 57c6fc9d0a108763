"""specialize: make an embedding model specialize in one corpus."""

__version__ = "0.1.0"
