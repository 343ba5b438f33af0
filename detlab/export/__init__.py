"""Export of trained detectors: conv-BN folding, SavedModel with pre- and post-processing,
LiteRT. `python -m detlab.export --model_dir=DIR --output_dir=OUT` (see __main__.py)."""
