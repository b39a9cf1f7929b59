"""``attune relocalize``: the next version of a tenant from its data plus its feedback, where the newest rule wins."""
