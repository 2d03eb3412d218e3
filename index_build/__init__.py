"""unprompt's offline side: manifest -> texts -> embeddings -> index."""
