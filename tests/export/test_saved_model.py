"""`python -m detlab.export` to a SavedModel that serves raw images without detlab.

The exported serving_default (conv-BN folded, EMA weights) must equal detlab.api.detect on
the unfolded model loaded with EMA weights: same detections in original pixels."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from detlab import api
from detlab.backbones.conventions import IMAGENET_MEAN_STD
from detlab.data.tf_example import build_example
from detlab.export.fold import fold_batch_norms
from detlab.export.saved_model import DetectionServing, serving_module

# Runs in a fresh interpreter that must never import detlab.
LOAD_AND_RUN = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    serve = loaded.signatures["serving_default"]
    out = serve(input_tensor=tf.constant(np.load(sys.argv[2])))
    assert not any(m == "detlab" or m.startswith("detlab.") for m in sys.modules), "detlab"
    print(json.dumps({"inputs": {k: [v.dtype.name, v.shape.as_list()]
                                 for k, v in serve.structured_input_signature[1].items()},
                      **{k: v.numpy().tolist() for k, v in out.items()},
                      "dtypes": {k: v.dtype.name for k, v in out.items()}}))
""")


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _assert_same_detections(got: dict, want: dict, top: int = 20):
  """OD API outputs vs api.detect's; the `top` best rows. Folding moves logits by ~1e-6, so
  detections whose scores tie within 1e-5 may come in either order: each of the `top` rows must
  have its score, class and box among the rows of equal score on the other side."""
  np.testing.assert_array_equal(np.asarray(got["num_detections"]), want["num_detections"])
  for i in range(len(want["num_detections"])):
    scores = np.asarray(got["detection_scores"])[i]
    np.testing.assert_allclose(scores[:top], want["scores"][i, :top], atol=1e-5)
    boxes, classes = np.asarray(got["detection_boxes"])[i], np.asarray(got["detection_classes"])[i]
    for k in range(top):
      tied = np.flatnonzero(np.abs(want["scores"][i] - scores[k]) <= 1e-5)
      assert any(classes[k] == want["classes"][i, j] and
                 np.allclose(boxes[k], want["boxes"][i, j], atol=1e-2) for j in tied), (
                     f"image {i} row {k}: class {classes[k]} box {boxes[k]} score {scores[k]} "
                     f"not among api.detect's rows {tied.tolist()} of that score")


@pytest.fixture(scope="module")
def ema_model(model_dir):
  return api.load_detector([str(model_dir / "config.gin")], checkpoint=str(model_dir))


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("export") / "out"
  result = subprocess.run([sys.executable, "-m", "detlab.export", f"--model_dir={model_dir}",
                           f"--output_dir={out}"], capture_output=True, text=True,
                          env=_env(), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result


def test_saved_model_serves_uint8_images_without_detlab(exported, model_dir, ema_model, images,
                                                        tmp_path):
  out, result = exported
  assert f"saved_model: {out / 'saved_model'}" in result.stdout
  batch, _ = images
  np.save(tmp_path / "batch.npy", batch)
  run = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(out / "saved_model"),
                        str(tmp_path / "batch.npy")], capture_output=True, text=True,
                       env=_env(), timeout=300, cwd=tmp_path)  # cwd: detlab not importable
  assert run.returncode == 0, run.stderr[-3000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  assert got["inputs"] == {"input_tensor": ["uint8", [None, None, None, 3]]}
  assert got["dtypes"] == {"detection_boxes": "float32", "detection_scores": "float32",
                           "detection_classes": "float32", "num_detections": "float32"}
  assert np.asarray(got["detection_boxes"]).shape == (2, 100, 4)
  _assert_same_detections(got, api.detect(ema_model, batch))
  # EMA weights by default: the raw weights detect differently.
  raw = api.load_detector([str(model_dir / "config.gin")], checkpoint=str(model_dir),
                          use_ema=False)
  raw_scores = api.detect(raw, batch)["scores"][:, :20]
  assert np.abs(np.asarray(got["detection_scores"])[:, :20] - raw_scores).max() > 1e-3
  info = json.loads((out / "export.json").read_text())
  assert info["weights"] == "EMA" and info["batch_norms_folded"]
  assert info["checkpoint"].endswith("ckpt-3") and info["image_size"] == 128
  assert info["input_mean"] == pytest.approx(list(IMAGENET_MEAN_STD.mean))  # D0: ImageNet mean/std
  assert info["input_std"] == pytest.approx(list(IMAGENET_MEAN_STD.std))


@pytest.mark.parametrize("input_type", ["encoded_image", "tf_example"])
def test_encoded_images_and_tf_examples_of_any_size(input_type, ema_model, images):
  """Bytes of images of different sizes in one batch; each mapped back to its own pixels."""
  batch, other = images
  pictures = [batch[0], other]
  encoded = [tf.io.encode_png(p).numpy() for p in pictures]
  if input_type == "tf_example":
    encoded = [build_example(encoded_image=e, image_format="png", source_id=str(i),
                             height=p.shape[0], width=p.shape[1],
                             boxes_yxyx=np.zeros([0, 4]), category_ids=[],
                             category_names=[]).SerializeToString()
               for i, (e, p) in enumerate(zip(encoded, pictures))]
  _, task = api.inference_setup(ema_model)
  serving = DetectionServing(fold_batch_norms(ema_model), task.postprocess_config)
  module = serving_module(serving, input_type)
  got = {k: v.numpy() for k, v in module.serve(tf.constant(encoded)).items()}
  _assert_same_detections(got, api.detect(ema_model, pictures))
  # The 200-px-high image maps back beyond the 128-px model input.
  assert got["detection_boxes"][1, :, 2].max() > 128
