"""One writer per model_dir: a lock naming the live writer, stale locks taken over, only the
chief of a multi-worker job writing to model_dir, evaluation writing only under eval/."""
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from detlab.training import experiment, writer
from detlab.training.writer import LOCK_FILE, ModelDirLock, ModelDirLockedError


def _lock_of(tmp_path, pid: int, host: str = socket.gethostname(), age_s: float = 0.0,
             boot: str | None = writer.boot_id()):
  (tmp_path / LOCK_FILE).write_text(json.dumps(
      {"host": host, "pid": pid, "boot_id": boot, "token": "other",
       "heartbeat": time.time() - age_s}))


def _live_pid(request) -> int:
  process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  request.addfinalizer(process.kill)
  return process.pid


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_a_second_writer_is_refused_naming_the_first_and_the_lock_is_released(tmp_path):
  with ModelDirLock(str(tmp_path), settle_s=0):
    record = json.loads((tmp_path / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(ModelDirLockedError) as error:
      ModelDirLock(str(tmp_path), settle_s=0).__enter__()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(error.value)
  assert not (tmp_path / LOCK_FILE).exists()


def test_a_live_process_on_this_host_with_a_fresh_heartbeat_keeps_its_lock(tmp_path, request):
  pid = _live_pid(request)
  _lock_of(tmp_path, pid, age_s=0.5 * writer.STALE_AFTER_S)
  with pytest.raises(ModelDirLockedError, match=f"pid {pid}"):
    ModelDirLock(str(tmp_path), settle_s=0).__enter__()


@pytest.mark.parametrize("holder, reason", [
    ("dead_pid_here", "its process is gone"),
    ("old_heartbeat_elsewhere", "heartbeat is"),
    # A restarted container: same host name, the new process got the old one's pid.
    ("own_pid_here", "this process's own"),
    # An unrelated live process that reused the pid; the heartbeat stopped long ago.
    ("live_pid_old_heartbeat_here", "heartbeat is"),
    ("earlier_boot_here", "before this host last booted")])
def test_a_stale_lock_is_taken_over(tmp_path, caplog, request, holder, reason):
  if holder == "dead_pid_here":
    _lock_of(tmp_path, _dead_pid())
  elif holder == "old_heartbeat_elsewhere":
    _lock_of(tmp_path, 1, host="another-host", age_s=2 * writer.STALE_AFTER_S)
  elif holder == "own_pid_here":
    _lock_of(tmp_path, os.getpid(), age_s=5.0)
  elif holder == "live_pid_old_heartbeat_here":
    _lock_of(tmp_path, _live_pid(request), age_s=10 * writer.STALE_AFTER_S)
  else:
    if writer.boot_id() is None:
      pytest.skip("no /proc/sys/kernel/random/boot_id on this system")
    _lock_of(tmp_path, _live_pid(request), age_s=5.0, boot="an-earlier-boot")
  with caplog.at_level(logging.WARNING):
    with ModelDirLock(str(tmp_path), settle_s=0):
      assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
  assert "Taking over the stale lock" in caplog.text and reason in caplog.text


def test_a_fresh_lock_of_another_host_is_refused(tmp_path):
  _lock_of(tmp_path, 1234, host="another-host", age_s=5.0)
  with pytest.raises(ModelDirLockedError, match="pid 1234 on host another-host"):
    ModelDirLock(str(tmp_path), settle_s=0).__enter__()


def test_train_in_a_restarted_container_takes_over_its_own_lock(run_train, tmp_path, caplog):
  """The container came back with the same host name and pid (1 in most images) and finds
  the lock its previous life left (SIGKILL leaves it): a restart must not refuse itself."""
  _lock_of(tmp_path, os.getpid(), age_s=5.0)
  with caplog.at_level(logging.WARNING):
    run_train(tmp_path, "train", "Schedule.train_steps = 2")
  assert "this process's own" in caplog.text
  assert tf.io.gfile.exists(str(tmp_path / "ckpt-2.index"))
  assert not (tmp_path / LOCK_FILE).exists()  # released at the end


def test_train_refuses_a_model_dir_with_a_live_writer(run_train, tmp_path, request):
  pid = _live_pid(request)
  _lock_of(tmp_path, pid)
  with pytest.raises(ModelDirLockedError, match=f"pid {pid}"):
    run_train(tmp_path, "train")
  assert not tf.io.gfile.glob(str(tmp_path / "ckpt-*")) and not (tmp_path / "config.gin").exists()


class _Resolver:
  def __init__(self, jobs, task_type, task_id):
    self.task_type, self.task_id = task_type, task_id
    self._spec = tf.train.ClusterSpec(jobs)

  def cluster_spec(self):
    return self._spec


class _Strategy:
  def __init__(self, resolver):
    self.cluster_resolver = resolver


@pytest.mark.parametrize("jobs,task,chief", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
    ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False)])
def test_only_the_chief_writes_to_model_dir(jobs, task, chief):
  strategy = _Strategy(_Resolver(jobs, *task))
  assert writer.task_of(strategy)[2] == chief
  expected = "/m" if chief else f"/m/workertemp_{task[1]}"
  assert writer.write_dir("/m", strategy) == expected
  assert writer.task_of(tf.distribute.get_strategy())[2]  # one process: its own chief


def test_a_non_chief_worker_writes_into_a_temporary_directory_it_removes(
    run_train, tmp_path, monkeypatch):
  run_train(tmp_path, "train", "Schedule.train_steps = 2")  # the chief's checkpoints
  before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)
            if (tmp_path / p).is_file()}
  monkeypatch.setattr(experiment, "task_of", lambda strategy: ("worker", 1, False))
  monkeypatch.setattr(experiment, "write_dir",
                      lambda model_dir, strategy: os.path.join(model_dir, "workertemp_1"))
  results = run_train(tmp_path, "train", "Schedule.train_steps = 4")
  assert results["train"]  # it trained (resumed at 2, on to 4) ...
  after = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)
           if (tmp_path / p).is_file()}
  assert after == before  # ... without touching the chief's files
  assert not (tmp_path / "workertemp_1").exists()


def test_evaluation_writes_only_under_eval(run_train, tmp_path):
  run_train(tmp_path, "train", "Schedule.train_steps = 2")
  before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)
            if (tmp_path / p).is_file()}
  results = run_train(tmp_path, "eval", "Schedule.train_steps = 2", continuous=True,
                      eval_timeout_s=5.0)
  assert "AP" in results["metrics"]
  after = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)
           if (tmp_path / p).is_file()}
  assert after == before
  assert {"metrics.json", "config.gin"} <= set(os.listdir(tmp_path / "eval"))
