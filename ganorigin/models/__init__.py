"""The models, as plain modules and estimators: exactly what their classes build, no file I/O.
Builders that add weights and acceleration: :mod:`ganorigin.factory`."""

from .attributor import GANAttributor, display_name
from .commfor import CommForDetector
from .detector import UFDDetector
from .encoder import E4EConfig, E4EEncoder

__all__ = ["CommForDetector", "E4EConfig", "E4EEncoder", "GANAttributor", "UFDDetector", "display_name"]
