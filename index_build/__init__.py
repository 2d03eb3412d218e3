"""unprompt's offline side: manifest -> texts -> embeddings -> index."""

import retriever  # noqa: F401  (applies the torchvision import fix before any model library loads)
