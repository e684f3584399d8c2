from .ecenet import ECENet
from .inference import InferenceOptions, SemSegInference
from .per_pixel import PerPixelSegmentor
from .preprocess import SemSegPreprocessor
