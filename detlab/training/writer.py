"""One writer per model_dir: the chief of a multi-worker job, holding a lock file.

Multi-worker jobs: every worker takes part in a checkpoint save (the variables are mirrored
across workers), so every worker saves; as in TF's multi-worker convention, only the chief
writes into model_dir and the others write into `model_dir/workertemp_<task id>`, which they
remove at the end. The chief is task "chief", or worker 0 when the cluster has no chief.

Two training processes on one model_dir (a second `detlab.train`, a copy-pasted command)
would overwrite each other's checkpoints: the writer holds `model_dir/writer.lock` (host,
pid, start and a heartbeat rewritten every `HEARTBEAT_S`); a second process refuses to start
and names the holder. A lock is stale, and taken over with a warning, when
  - its heartbeat is older than `STALE_AFTER_S` (any host: a preempted pod cannot clean up
    after SIGKILL, and on this host its pid may since belong to an unrelated process);
  - it was written on this host in an earlier boot (its boot id is not this kernel's);
  - its pid is this process's own but no lock of this process holds it: a restarted container
    keeps its hostname and often its pid (1, or the same entrypoint's), and no other live
    process can hold this pid now (a second lock taken in one process is still refused);
  - its process is gone (this host).
A file system without atomic create (gs://) makes this best-effort: the lock is written,
then read back after a moment to see who won.
"""
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
import tensorflow as tf

from detlab.io import write_json

LOCK_FILE = "writer.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
_HELD_HERE = set()  # tokens of the locks this process holds now


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


def boot_id() -> str | None:
  """This kernel's boot id (Linux; None elsewhere): it changes with every boot of the host."""
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return None


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
    self.record = {"host": socket.gethostname(), "pid": os.getpid(), "boot_id": boot_id(),
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
    # Whole or not at all (detlab.io: write + rename): readers never see half a lock.
    write_json(self.path, dict(self.record, heartbeat=time.time()), indent=None)

  def _stale_because(self, holder: dict) -> str | None:
    """Why the holder's lock is stale (see the module doc), or None while it is live."""
    age = time.time() - float(holder.get("heartbeat", 0))
    if age >= STALE_AFTER_S:
      return f"its heartbeat is {age:.0f} s old (stale after {STALE_AFTER_S:.0f} s)"
    if holder.get("host") != self.record["host"]:
      return None
    if holder.get("boot_id") and self.record["boot_id"] and (
        holder["boot_id"] != self.record["boot_id"]):
      return "it was written before this host last booted"
    pid = int(holder.get("pid", -1))
    if pid == self.record["pid"]:
      if holder.get("token") in _HELD_HERE:
        return None
      return "its pid is this process's own, which holds no such lock (a restarted container)"
    if not _alive(pid):
      return "its process is gone"
    return None

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
      reason = self._stale_because(holder)
      if reason is None:
        self._refuse(holder)
      logging.warning("Taking over the stale lock %s of pid %s on %s: %s.", self.path,
                      holder.get("pid"), holder.get("host"), reason)
    tf.io.gfile.makedirs(os.path.dirname(self.path))
    self._write()
    time.sleep(self.settle_s)  # two starting at once: the last write wins, the other sees it
    holder = self._read()
    if holder is None or holder.get("token") != self.record["token"]:
      self._refuse(holder or {})
    _HELD_HERE.add(self.record["token"])
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
    _HELD_HERE.discard(self.record["token"])
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    holder = self._read()
    if holder is not None and holder.get("token") == self.record["token"]:
      tf.io.gfile.remove(self.path)
