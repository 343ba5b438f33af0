"""The configurable root, `train(...)`: strategy -> task's model -> task's inputs -> loop ->
the one evaluation loop (training/evaluation.py). Task-free: everything task-specific is behind
tasks/base.py's Task (`train.task = @DetectionTask()` / `@ClassificationTask()` /
`@SegmentationTask()` / `@JointTask()`).

Everything that creates variables is built inside `strategy.scope()` from uncalled factories.
A checkpoint holds the model, optimizer (step), EMA shadows and the input iterator, so a
stopped run (SIGTERM, crash) resumes exactly; see training/checkpoint.py.
"""
import contextlib
import os
import time

from absl import logging
import gin
import tensorflow as tf
import tf_keras as keras

from detlab import io
from detlab.data import record_files
from detlab.layers.fake_quant import is_quantization_aware
from detlab.tasks.base import Task
from detlab.training.bn_reestimation import BatchNormReestimation, statistics_batch_size
from detlab.training.checkpoint import BestCheckpoint, CheckpointKeeper
from detlab.training.ema import EmaConfig, WeightAverage
from detlab.training.evaluation import PeriodicEvaluator, evaluate_continuously
from detlab.training.initialize import initialize_from_checkpoint
from detlab.training.loop import run_training
from detlab.training.optimizer import OptimizerConfig
from detlab.training.preemption import PreemptionWatcher
from detlab.training.run_seed import resolve_seed, save_seed
from detlab.training.setup import (Schedule, configured_task, get_strategy,  # noqa: F401  pylint: disable=unused-import
                                   input_checkpointable, precision_policy, reject_removed,
                                   resolve_task, schedule_optimizer, task_trainer,
                                   train_dataset)
from detlab.training.writer import ModelDirLock, task_of, write_dir

MODES = ("train", "eval", "train_and_eval")


@gin.configurable(denylist=["model_dir", "mode", "continuous", "eval_timeout_s"])
def train(model_dir: str, mode: str = "train_and_eval", *, task: Task | None = None,
          schedule: Schedule = Schedule(), optimizer: OptimizerConfig = OptimizerConfig(),
          ema: EmaConfig = EmaConfig(),
          bn_reestimation: BatchNormReestimation | None = None,
          strategy: str = "off", tpu: str | None = None,
          seed: int | None = None, num_eval_images: int | None = None,
          checkpoint_input: bool = True, nan_trials: int = 3,
          init_checkpoint: str | None = None, init_mode: str = "detector",
          precision: str = "float32", jit_compile: bool = False,
          label_map_file: str | None = None, annotation_file: str | None = None,
          coco_backend: str | None = None, continuous: bool = False,
          eval_timeout_s: float = 3600.0, **removed) -> dict:
  """Trains and/or evaluates `task`'s model in `model_dir`; returns the final metrics.

  task: a tasks/base.py Task (model, inputs, loss, prediction, evaluator).
  label_map_file, annotation_file, coco_backend: handed to a task that takes them
    (Task.use_settings: the detection and joint tasks); an error for one that does not.
  removed: the arguments that built a detector before train.task (model_fn, train_input,
    eval_input, loss, postprocess) are rejected with the DetectionTask binding to use.
  checkpoint_input: save the tf.data iterator position in checkpoints (exact resume; costs
    the shuffle/prefetch buffers in every checkpoint). nan_trials: restores after a
    non-finite step before giving up. init_checkpoint/init_mode: fine-tuning start (used only
    when model_dir has no checkpoint yet). precision: keras dtype policy ('mixed_float16'
    adds loss scaling); losses, box decoding and NMS stay float32. continuous (eval mode):
    evaluate each new checkpoint until the last step or `eval_timeout_s` without one.
  bn_reestimation: `@BatchNormReestimation()`: BN statistics re-estimated on training
    batches before every evaluation (training/bn_reestimation.py); None (default): off.
  seed: None -> the seed saved in model_dir (seed.json), else a fresh one, logged and saved.
  num_eval_images: evaluate only the first N images of the eval set (None: all).
  Writers: a training run holds model_dir/writer.lock (a second one is refused); in a
  multi-worker job only the chief writes to model_dir; --mode=eval writes only under eval/.
  SIGTERM (training or any evaluation): stop, save, return with "preempted" True.
  Results: {"train": last logged losses, "train_seconds", "preempted", "metrics", and the
  task's extra results (detection: "per_class_AP")}.
  """
  if mode not in MODES:
    raise ValueError(f"--mode must be one of {MODES}, got {mode!r}.")
  if continuous and mode != "eval":
    raise ValueError("--continuous needs --mode=eval (it watches a training job's model_dir).")
  reject_removed(removed)
  task = resolve_task(task, label_map_file=label_map_file, annotation_file=annotation_file,
                      coco_backend=coco_backend)
  training = mode in ("train", "train_and_eval")
  distribution = get_strategy(strategy, tpu)
  # One writer per model_dir (training/writer.py): the chief of a training job, holding the
  # lock; other workers write into a temporary directory; evaluation only under eval/.
  _, _, chief = task_of(distribution)
  out_dir = write_dir(model_dir, distribution) if training else os.path.join(model_dir, "eval")
  with contextlib.ExitStack() as stack:
    preemption = stack.enter_context(PreemptionWatcher())
    tf.io.gfile.makedirs(out_dir)
    if training and chief:
      stack.enter_context(ModelDirLock(model_dir))
    elif training:
      stack.callback(tf.io.gfile.rmtree, out_dir)
    seed, new_seed = resolve_seed(model_dir, seed)
    keras.utils.set_random_seed(seed)  # python, numpy and TF seeds: reproducible init
    if training and new_seed:
      save_seed(out_dir, seed)
    io.write_text(os.path.join(out_dir, "config.gin"), gin.config_str())
    # Skipped (cut-short) records go to this process's own place: the chief's train/, an eval
    # job's eval/; another worker only logs them.
    record_files.SKIPPED.report_to(
        None if training and not chief else
        os.path.join(out_dir, "train") if training else out_dir)
    stack.callback(record_files.SKIPPED.report_to, None)
    return _run(model_dir, out_dir, mode, distribution, preemption, stack, task=task,
                schedule=schedule, optimizer=optimizer, ema=ema,
                bn_reestimation=bn_reestimation, strategy=strategy, seed=seed,
                num_eval_images=num_eval_images,
                checkpoint_input=checkpoint_input, nan_trials=nan_trials,
                init_checkpoint=init_checkpoint, init_mode=init_mode, precision=precision,
                jit_compile=jit_compile, continuous=continuous, eval_timeout_s=eval_timeout_s)


def _run(model_dir: str, out_dir: str, mode: str, distribution, preemption, closing, *,
         task: Task,
         schedule, optimizer, ema, bn_reestimation, strategy, seed, num_eval_images,
         checkpoint_input, nan_trials,
         init_checkpoint, init_mode, precision, jit_compile, continuous,
         eval_timeout_s) -> dict:
  """train()'s work once the writer is settled: reads model_dir, writes only out_dir.
  `closing` (an ExitStack) closes the summary writers on every way out: returned, stopped,
  raised."""
  training = mode in ("train", "train_and_eval")
  stop_requested = lambda: preemption.requested  # pylint: disable=unnecessary-lambda-assignment

  with precision_policy(precision), distribution.scope():
    model = task.build_model()
    opt, learning_rate = schedule_optimizer(optimizer, schedule, precision)
    average = WeightAverage(model, ema) if ema.enabled else None
    step = opt.iterations
  logging.info("%s", task.describe(model))
  task.preflight(model)  # bad data fails now, not at step N
  trackables = {"optimizer": opt}
  if average is not None:
    trackables["ema"] = average.shadows
  if training:
    iterator = iter(train_dataset(distribution, task, model, schedule, seed))
    if checkpoint_input and input_checkpointable(iterator):
      trackables["iterator"] = iterator
    elif checkpoint_input:
      logging.warning("The %s strategy's input iterator cannot be checkpointed; a resumed run "
                      "restarts the input stream (model, optimizer and EMA resume exactly).",
                      strategy)
  keeper = CheckpointKeeper(out_dir, model, read_dir=model_dir, read_only=not training,
                            **trackables)
  resumed = keeper.restore_latest()
  if training and not resumed and not init_checkpoint and is_quantization_aware(model):
    raise ValueError(
        "efficientdet.quantization_aware = True fine-tunes a TRAINED detector (its BN stays "
        "frozen at the statistics it starts with): bind train.init_checkpoint to the trained "
        "model_dir (quantization_aware_training.gin), or train the float model first.")
  if training and resumed and not keeper.input_restored:
    # No input position restored: the stream starts again at the restored step (a task whose
    # stream depends on the step, progressive learning, starts there).
    logging.warning(
        "Resumed step %d without an input position (%s): model, optimizer, EMA and step are "
        "restored exactly, the input stream restarts at that step.", int(step.numpy()),
        "the checkpoint was written under a strategy whose input iterator cannot be saved"
        if "iterator" in trackables else "train.checkpoint_input = False"
        if not checkpoint_input else f"the {strategy} strategy's iterator cannot be saved")
    iterator = iter(train_dataset(distribution, task, model, schedule, seed,
                                  int(step.numpy())))
    if "iterator" in trackables:
      keeper.track_input(iterator)
  if not resumed and init_checkpoint:
    initialize_from_checkpoint(model, init_checkpoint, init_mode)
    if average is not None:
      average.reset()
  results = {"preempted": False}
  evaluator = None
  if mode in ("eval", "train_and_eval"):
    task.eval_dataset(model, 8)  # a missing eval input fails before training, not after
    evaluator = PeriodicEvaluator(
        out_dir, task, model, lambda: task.eval_dataset(model, 8), num_eval_images,
        average if ema.evaluate_average else None,
        BestCheckpoint(out_dir, task.primary_metric, model=model,
                       **({"ema": average.shadows} if average else {}))
        if mode == "train_and_eval" and task.primary_metric else None,
        stop_requested=stop_requested,
        strategy=distribution,
        summary_dir=out_dir if mode == "eval" else os.path.join(out_dir, "eval"),
        bn_reestimation=bn_reestimation,
        # The run's own stream from the evaluated step's place (its progressive stage).
        make_train_batches=lambda at: task.train_dataset(
            model, None, statistics_batch_size(distribution, schedule.batch_size), seed, at))
    closing.callback(evaluator.close)

  if training:
    trainer = task_trainer(distribution, task, model, opt, optimizer, average, jit_compile)
    start = int(step.numpy())
    logging.info("%s at step %d of %d (global batch %d, %d replica(s)).",
                 "Resuming" if resumed else "Starting", start, schedule.total_steps,
                 schedule.batch_size, distribution.num_replicas_in_sync)
    writer = tf.summary.create_file_writer(os.path.join(out_dir, "train"))
    closing.callback(writer.close)
    started = time.monotonic()
    results["train"] = run_training(
        trainer, iterator, start_step=start, total_steps=schedule.total_steps,
        steps_per_loop=schedule.steps_per_loop, global_batch=schedule.batch_size,
        learning_rate=learning_rate, checkpoint=keeper,
        checkpoint_every=schedule.checkpoint_every_steps, summary_writer=writer,
        log_every=schedule.log_every_steps, nan_trials=nan_trials,
        stop_requested=stop_requested,
        evaluate_every=schedule.eval_every_steps if evaluator else 0,
        evaluate=evaluator)
    results["preempted"] = trainer.stopped  # also when another worker was signalled
    results["train_seconds"] = time.monotonic() - started
    io.write_text(os.path.join(out_dir, "operative_config.gin"), gin.operative_config_str())
    if results["preempted"]:
      return results

  if evaluator is not None:
    if mode == "eval" and continuous:
      final = evaluate_continuously(evaluator, keeper, step, schedule.total_steps,
                                    eval_timeout_s, stop_requested)
    else:
      if mode == "eval" and not resumed:
        raise FileNotFoundError(f"No checkpoint in {model_dir} to evaluate; train first.")
      final = evaluator(int(step.numpy()))
    if final is not None:
      results["metrics"] = final[0]
      results.update(final[1])
    results["preempted"] = preemption.requested  # a stop during the evaluation
  return results
