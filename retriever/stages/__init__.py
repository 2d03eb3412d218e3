"""The pipeline's stages, each behind its own small interface: retrieve, rerank, assemble, regress, blend."""
