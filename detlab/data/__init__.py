"""Input pipelines: TFRecord decoding, augmentation, padding, target assignment."""
