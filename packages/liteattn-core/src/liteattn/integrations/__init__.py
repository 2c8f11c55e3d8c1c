"""Integrations of liteattn with model libraries (each imports its library lazily)."""
