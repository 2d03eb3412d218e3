"""Manifests shipped with unprompt (read through importlib.resources)."""
