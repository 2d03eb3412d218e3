"""Regressor heads: image features -> the metric's 384-d MiniLM space. ``model`` owns the head and its file
format, ``config`` the training knobs, ``train`` the training recipe."""
