"""Tasks for the shared training root (training/experiment.py): tasks/base.py's Task, and the
detection, classification and segmentation tasks that implement it."""
