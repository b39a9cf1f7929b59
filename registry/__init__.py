"""attune registry package (see its issue)."""
__all__: list[str] = []
