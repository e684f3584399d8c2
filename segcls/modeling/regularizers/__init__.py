"""Training-only feature regularizers (REGULARIZER_REGISTRY)."""
