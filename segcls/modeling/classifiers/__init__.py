from .linear import LinearClassifier
