"""GANOrigin: tell GAN-generated faces from real ones and name the GAN that made them (and flag other generators)."""

from .errors import (
    DatasetError,
    GANOriginError,
    ImageTooLargeError,
    InvalidImageError,
    ModelUnavailableError,
    UnsafePickleError,
    WeightsFormatError,
    WeightsNotFoundError,
)
from .factory import create_commfor, create_detector, create_encoder
from .hub import WeightSources
from .images import load_image
from .models import CommForDetector, E4EEncoder, GANAttributor, UFDDetector
from .pipeline import GANOrigin
from .provenance import Provenance, read_provenance
from .result import DEFAULT_THRESHOLD, Prediction
from .verdict import UnsurePolicy

__version__ = "0.2.0"

__all__ = [
    "CommForDetector",
    "DEFAULT_THRESHOLD",
    "DatasetError",
    "E4EEncoder",
    "GANAttributor",
    "GANOrigin",
    "GANOriginError",
    "ImageTooLargeError",
    "InvalidImageError",
    "ModelUnavailableError",
    "Prediction",
    "Provenance",
    "UFDDetector",
    "UnsafePickleError",
    "UnsurePolicy",
    "WeightSources",
    "WeightsFormatError",
    "WeightsNotFoundError",
    "create_commfor",
    "create_detector",
    "create_encoder",
    "load_image",
    "read_provenance",
]
