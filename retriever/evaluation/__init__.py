"""Offline scoring on the Kaggle metric: score, submit, eval."""
