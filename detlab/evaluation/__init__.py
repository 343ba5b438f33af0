"""COCO evaluation (pycocotools) and result rendering."""
