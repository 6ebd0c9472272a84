"""Token-selector analysis: keep maps, keep frequency, attributions (being built)."""

__all__: list[str] = []
