"""Embedding models: the models vecmigrate runs, their registry, and re-embedding."""
