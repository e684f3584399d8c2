from .cross_entropy import CrossEntropyLoss
