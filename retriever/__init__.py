"""unprompt's online side: image -> features -> candidates -> prompt -> embedding.

The Python API::

    from retriever import Interrogator
    it = Interrogator.load("lite")                 # a built-in profile name, a .toml path, or a Profile
    result = it.interrogate("photo.jpg")           # or a PIL image; mode="fast|classic|best|negative", flavours=N
    result.prompt, result.alternatives, result.negative_prompt, result.embedding, result.timings_ms
    results = it.interrogate_batch(["a.png", "b.png"])
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Interrogation", "Interrogator", "__version__"]

if TYPE_CHECKING:
    from retriever.pipeline import Interrogation, Interrogator


def __getattr__(name: str) -> Any:  # the pipeline (and torch) load on first use, not on `import retriever`
    if name in ("Interrogator", "Interrogation"):
        from retriever import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'retriever' has no attribute {name!r}")
