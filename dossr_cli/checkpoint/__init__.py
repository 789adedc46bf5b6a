"""Weights: the authors' checkpoint layout, our bundle format, and where weights live."""
