"""The state OpenVINO leaves behind that used to turn a SIGTERM into SIGSEGV: two compiled
models released in creation order leave the main thread's alternate signal stack unmapped.
Used in-process (test_preemption_eval) and in a child process (test_signal_stack)."""
import gc


def release_two_openvino_models() -> None:
  """Compiles two tiny models on CPU, runs each once, and releases them first to last.
  Raises ImportError without openvino."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import openvino as ov  # pylint: disable=import-outside-toplevel
  import openvino.opset13 as ops  # pylint: disable=import-outside-toplevel

  def compiled():
    image = ops.parameter([1, 8], np.float32)
    model = ov.Core().compile_model(ov.Model([ops.relu(image)], [image]), "CPU")
    model(np.ones([1, 8], np.float32))
    return model

  first, second = compiled(), compiled()
  del first
  gc.collect()
  del second
  gc.collect()
