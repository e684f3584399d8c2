"""Analysis helpers behind ``tools/`` scripts (figures of the papers). Not imported by ``segcls``."""
