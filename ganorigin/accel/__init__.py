"""Fast inference: precision chosen per device, models converted into new modules (packed
low-precision weights, folded BatchNorms), each kept only where it agrees with exact fp32."""

from .convert import (Accelerated, BorderlineExact, borderline_band, fast_commfor, fast_detector, fast_encoder,
                      precision_of, replace_modules)
from .packed import attention_paths
from .precision import PRECISIONS, candidate_precisions, cpu_has_bf16_matrix_units, cpu_model_name, resolve_precision
from .probe import accelerate, precision_summary
from .workers import ModelWorkers

__all__ = ["PRECISIONS", "Accelerated", "BorderlineExact", "ModelWorkers", "accelerate", "attention_paths",
           "borderline_band", "candidate_precisions", "cpu_has_bf16_matrix_units", "cpu_model_name", "fast_commfor",
           "fast_detector", "fast_encoder", "precision_of", "precision_summary", "replace_modules", "resolve_precision"]
