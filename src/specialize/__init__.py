"""specialize: make an embedding model specialize in one corpus.

    from specialize import Pipeline
    Pipeline("config.yaml").run()
"""

__version__ = "0.1.0"
__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    """``specialize.Pipeline``, imported on first use so ``import specialize`` stays light."""
    if name == "Pipeline":
        from specialize.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'specialize' has no attribute {name!r}")
