"""Mask analysis: layer density, evolution across snapshots, distances, churn (being built)."""

__all__: list[str] = []
