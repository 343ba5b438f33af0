"""Anchors, box coding, target assignment, losses and post-processing for dense detectors."""
