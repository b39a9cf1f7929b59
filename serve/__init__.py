"""attune serve package (see its issue)."""
__all__: list[str] = []
