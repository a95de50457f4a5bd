"""Shared model utilities: resolving model names to folders, and batched LM scoring."""
