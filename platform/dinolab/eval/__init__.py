"""Evaluation of frozen backbones: feature extraction, weighted k-NN, linear probe, collapse detection."""

from .collapse import detect_collapse
from .features import extract_features
from .knn import weighted_knn
from .linear import linear_probe

__all__ = ["detect_collapse", "extract_features", "linear_probe", "weighted_knn"]
