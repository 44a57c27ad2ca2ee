"""Errors raised by GANOrigin. Every message says what failed and how to fix it."""


class GANOriginError(Exception):
    """Base class of every error GANOrigin raises on purpose."""


class WeightsNotFoundError(GANOriginError, FileNotFoundError):
    """One or more weight files could not be found locally or downloaded."""


class WeightsFormatError(GANOriginError, ValueError):
    """A weight file exists but does not hold what it should (wrong keys, shapes, digest)."""


class UnsafePickleError(WeightsFormatError):
    """A pickle asked for something outside the allow-list; nothing in it was executed."""


class InvalidImageError(GANOriginError, ValueError):
    """The input is not an image GANOrigin can analyse (not an image, truncated, too large...)."""


class ImageTooLargeError(InvalidImageError):
    """The input exceeds the byte or megapixel limit (checked before decoding)."""


class AlignmentUnavailableError(GANOriginError, RuntimeError):
    """Face alignment was asked for but dlib or its landmark model is not installed."""


class ConfigurationError(GANOriginError, ValueError):
    """A setting (an argument or an environment variable) has a value GANOrigin, or this machine, cannot use."""


class DatasetError(GANOriginError, ValueError):
    """A data folder, latents folder or trained-model folder is missing or inconsistent."""


class ModelUnavailableError(GANOriginError):
    """The model is still loading, or its weights could not be loaded."""


class InvalidVideoError(GANOriginError, ValueError):
    """The input is not a video GANOrigin can analyse (not a video, no video stream, truncated, over the limits...)."""


class VideoTooLargeError(InvalidVideoError):
    """The video exceeds a limit (bytes, duration, frame size, frame count), found before decoding where the header says."""
