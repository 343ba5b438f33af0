"""One writer per model_dir: the chief of a multi-worker job, holding a lock file.

Multi-worker jobs: every worker takes part in a checkpoint save (the variables are mirrored
across workers), so every worker saves; as in TF's multi-worker convention, only the chief
writes into model_dir and the others write into `model_dir/workertemp_<task id>`, which they
remove at the end. The chief is task "chief", or worker 0 when the cluster has no chief.

Two training processes on one model_dir (a second `detlab.train`, a copy-pasted command)
would overwrite each other's checkpoints: the writer holds `model_dir/writer.lock` (host,
pid, start and a heartbeat rewritten every `HEARTBEAT_S`); a second process refuses to start
and names the holder. A lock is stale, and taken over, when its process is gone (same host)
or its heartbeat is older than `STALE_AFTER_S` (another host: a preempted pod cannot clean
up after SIGKILL). A file system without atomic create (gs://) makes this best-effort: the
lock is written, then read back after a moment to see who won.
"""
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
import tensorflow as tf

LOCK_FILE = "writer.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class ModelDirLockedError(RuntimeError):
  """Another live process writes to this model_dir (the message names it)."""


def task_of(strategy) -> tuple[str | None, int, bool]:
  """(task type, task id, whether it is the chief) of this process in `strategy`'s cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  task_type = getattr(resolver, "task_type", None)
  task_id = int(getattr(resolver, "task_id", None) or 0)
  if task_type in (None, "chief") or resolver is None:
    return task_type, task_id, True
  jobs = resolver.cluster_spec().as_dict() if resolver.cluster_spec() else {}
  return task_type, task_id, task_type == "worker" and task_id == 0 and "chief" not in jobs


def write_dir(model_dir: str, strategy) -> str:
  """model_dir for the chief; a per-worker temporary directory for the other workers."""
  _, task_id, chief = task_of(strategy)
  return model_dir if chief else os.path.join(model_dir, f"workertemp_{task_id}")


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, another user's
    return True
  return True


class ModelDirLock:
  """Context manager: holds model_dir/writer.lock for this process (see the module doc)."""

  def __init__(self, model_dir: str, settle_s: float = 0.2):
    self.path = os.path.join(model_dir, LOCK_FILE)
    self.settle_s = settle_s
    self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                   "token": uuid.uuid4().hex, "started": time.time()}
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict | None:
    try:
      with tf.io.gfile.GFile(self.path) as f:
        return json.load(f)
    except (tf.errors.NotFoundError, ValueError, UnicodeDecodeError):
      return None

  def _write(self) -> None:
    # Write + rename: readers never see half a lock, and some file systems (ram://) append
    # instead of truncating when a file is opened for writing again.
    temporary = f"{self.path}.{self.record['token']}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as f:
      json.dump(dict(self.record, heartbeat=time.time()), f)
    tf.io.gfile.rename(temporary, self.path, overwrite=True)

  def _holder_is_live(self, holder: dict) -> bool:
    if holder.get("host") == self.record["host"]:
      return _alive(int(holder.get("pid", -1)))
    return time.time() - float(holder.get("heartbeat", 0)) < STALE_AFTER_S

  def _refuse(self, holder: dict) -> None:
    raise ModelDirLockedError(
        f"{os.path.dirname(self.path)} is being written by another process: pid "
        f"{holder.get('pid')} on host {holder.get('host')} (lock file {self.path}, heartbeat "
        f"{time.time() - float(holder.get('heartbeat', 0)):.0f} s ago). Stop that process or "
        f"use another --model_dir; if it is gone, delete the lock file (it goes stale "
        f"{STALE_AFTER_S:.0f} s after its last heartbeat).")

  def __enter__(self) -> "ModelDirLock":
    holder = self._read()
    if holder is not None and holder.get("token") != self.record["token"]:
      if self._holder_is_live(holder):
        self._refuse(holder)
      logging.warning("Taking over the stale lock %s of pid %s on %s.", self.path,
                      holder.get("pid"), holder.get("host"))
    tf.io.gfile.makedirs(os.path.dirname(self.path))
    self._write()
    time.sleep(self.settle_s)  # two starting at once: the last write wins, the other sees it
    holder = self._read()
    if holder is None or holder.get("token") != self.record["token"]:
      self._refuse(holder or {})
    self._thread = threading.Thread(target=self._beat, daemon=True, name="model-dir-lock")
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._write()
      except tf.errors.OpError as error:  # a flaky file system must not kill training
        logging.warning("Could not refresh %s: %s", self.path, error.message)

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    holder = self._read()
    if holder is not None and holder.get("token") == self.record["token"]:
      tf.io.gfile.remove(self.path)
