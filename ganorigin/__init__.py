"""GANOrigin: tell GAN-generated faces from real ones and name the GAN that made them (and flag other generators)."""

from .errors import (
    ConfigurationError,
    DatasetError,
    GANOriginError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidVideoError,
    ModelUnavailableError,
    UnsafePickleError,
    VideoTooLargeError,
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
from .video import FrameResult, VideoPrediction

__version__ = "0.2.0"

__all__ = [
    "CommForDetector",
    "ConfigurationError",
    "DEFAULT_THRESHOLD",
    "DatasetError",
    "E4EEncoder",
    "FrameResult",
    "GANAttributor",
    "GANOrigin",
    "GANOriginError",
    "ImageTooLargeError",
    "InvalidImageError",
    "InvalidVideoError",
    "ModelUnavailableError",
    "Prediction",
    "Provenance",
    "UFDDetector",
    "UnsafePickleError",
    "UnsurePolicy",
    "VideoPrediction",
    "VideoTooLargeError",
    "WeightSources",
    "WeightsFormatError",
    "WeightsNotFoundError",
    "create_commfor",
    "create_detector",
    "create_encoder",
    "load_image",
    "read_provenance",
]
