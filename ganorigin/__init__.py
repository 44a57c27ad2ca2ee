"""GANOrigin: tell GAN-generated faces from real ones and name the GAN that made them."""

from .detector import UFDDetector
from .encoder import E4EEncoder
from .errors import (
    GANOriginError,
    ImageTooLargeError,
    InvalidImageError,
    UnsafePickleError,
    WeightsFormatError,
    WeightsNotFoundError,
)
from .images import load_image
from .pipeline import DEFAULT_THRESHOLD, GANOrigin, Prediction
from .svm import GANAttributor
from .weights import WeightSources

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_THRESHOLD",
    "E4EEncoder",
    "GANAttributor",
    "GANOrigin",
    "GANOriginError",
    "ImageTooLargeError",
    "InvalidImageError",
    "Prediction",
    "UFDDetector",
    "UnsafePickleError",
    "WeightSources",
    "WeightsFormatError",
    "WeightsNotFoundError",
    "load_image",
]
