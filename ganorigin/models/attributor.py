from ..svm import GANAttributor, display_name  # moved here from svm.py when the hardening lands

__all__ = ["GANAttributor", "display_name"]
