r"""Speed and size of a gin-configured model on this machine (`python -m detlab.benchmark`).

  python -m detlab.benchmark --gin_file=efficientdet_d0.gin [--json] [--only=params,gmacs]
  python -m detlab.benchmark --backbone=efficientnet_b0 --only=params,gmacs,infer_img_s_bs1
  python -m detlab.benchmark --gin_file=efficientdet_d0.gin --input_pipeline \
      --gin_bindings="TRAIN_FILE_PATTERN='data/shapes/train-*.tfrecord'"
  python -m detlab.benchmark --gin_file=classification_efficientnet_b0.gin  # vs keras fit
  python -m detlab.benchmark --gin_file=segmentation_d4.gin --only=params,gmacs

Detection gin files (train.task = @DetectionTask()): parameters, FLOPs
(multiply-adds, TF profiler on the traced network, batch 1), network-only inference images/s
at batch 1 and 8, end-to-end (network + post-processing) images/s at batch 1, post-processing
ms per image, a training step's images/s at batch 8, and an fp32 matmul peak measured in the
same run with the fraction of it the network achieves. --input_pipeline (or `input_img_s` in
--only) also times the training input pipeline (DetectionTask.train_input) at the training batch.

Task gin files (train.task = @ClassificationTask() / @SegmentationTask()): the model the task
builds for training, the same network measurements, and `train_img_s`: the training step
through detlab's Trainer with the gin's optimizer, weight decay, clipping and EMA (batch 32
for classification, 8 for segmentation); classification adds `keras_fit_img_s`: the same
network from tf_keras.applications (weights=None) trained with model.fit and the same
optimizer on the same in-memory batch, in the same run.

Layout: __main__.py (flags, main), detection.py, tasks.py (classification, segmentation),
train_step.py (the Trainer as train() builds it), keras_fit.py, backbone.py (--backbone),
timing.py (timer, multiply-adds, network speed), report.py (machine line, table).
"""
from detlab.benchmark.backbone import measure_backbone, native_classifier_size
from detlab.benchmark.detection import (ALL, INPUT, NETWORK_ONLY, measure,
                                        measure_input_pipeline, synthetic_train_batch)
from detlab.benchmark.report import format_table, machine_description, with_derived_keys
from detlab.benchmark.tasks import MEASUREMENTS, measure_task
from detlab.benchmark.timing import count_gmacs, matmul_gflops, measure_network, time_call

__all__ = ["ALL", "INPUT", "MEASUREMENTS", "NETWORK_ONLY", "count_gmacs", "format_table",
           "machine_description", "matmul_gflops", "measure", "measure_backbone",
           "measure_input_pipeline", "measure_network", "measure_task",
           "native_classifier_size", "synthetic_train_batch", "time_call",
           "with_derived_keys"]
