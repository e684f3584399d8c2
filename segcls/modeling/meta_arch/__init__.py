from .ecenet import ECENet
from .per_pixel import PerPixelSegmentor
