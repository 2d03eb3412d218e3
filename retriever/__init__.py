"""unprompt's online side: image -> features -> candidates -> prompt -> embedding."""

from retriever._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
