"""Training-only feature regularizers (REGULARIZER_REGISTRY)."""
from .car import CARRegularizer, add_car_config
