"""detlab: EfficientDet-style object detection in TensorFlow 2 (tf_keras)."""
__version__ = "0.1.0"
