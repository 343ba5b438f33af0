"""Tasks: model, inputs, loss and evaluator for detection (later classification, segmentation)."""
