"""Train and evaluate the attribution model: data on disk, e4e features, the SVM recipe, reports.

The trained model's file format (JSON + arrays, no pickle) is :mod:`ganorigin.hub.trained_model`.
"""

from .data import IMAGE_EXTENSIONS, find_images, labelled_images, resolution_augment
from .evaluate import RowWriter, evaluate, predict_paths, write_rows
from .features import LATENTS_MANIFEST, ExtractSummary, Latents, extract_features, load_latents, source_groups
from .fit import TrainResult, make_classifier, source_folds, split_by_source, train_attribution_model
from .reports import format_report, save_confusion_png

__all__ = ["IMAGE_EXTENSIONS", "LATENTS_MANIFEST", "ExtractSummary", "Latents", "RowWriter", "TrainResult", "evaluate",
           "extract_features", "find_images", "format_report", "labelled_images", "load_latents", "make_classifier", "predict_paths",
           "resolution_augment", "save_confusion_png", "source_folds", "source_groups", "split_by_source",
           "train_attribution_model", "write_rows"]
