"""Semantic segmentation: loss (the model is in detlab.models.segmentation)."""
