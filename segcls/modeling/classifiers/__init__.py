from .linear import LinearClassifier
from .context_aware import ContextAwareClassifier
