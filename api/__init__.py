"""unprompt's user-facing surface: the command line and the HTTP service."""

import retriever  # noqa: F401  (applies the torchvision import fix before any model library loads)
