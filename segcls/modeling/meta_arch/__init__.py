from .per_pixel import PerPixelSegmentor
