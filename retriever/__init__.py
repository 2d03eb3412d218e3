"""unprompt's online side: image -> features -> candidates -> prompt -> embedding."""

__version__ = "0.1.0"
