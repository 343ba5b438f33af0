"""Deep functional models build within Python's default recursion limit (issue: V2-XL failed
with RecursionError in a fresh process, depending on how deep the caller's stack was)."""
import subprocess
import sys
import textwrap

import pytest
import tf_keras as keras

from detlab.layers.functional import deep_graph_recursion, functional_model


def _chain(depth: int):
  inputs = keras.Input((4,))
  x = inputs
  for _ in range(depth):
    x = keras.layers.Activation("linear")(x)
  return inputs, x


def test_chain_deeper_than_the_limit_fails_with_keras_and_builds_with_functional_model():
  limit = sys.getrecursionlimit()
  inputs, outputs = _chain(limit + 200)
  with pytest.raises(RecursionError):
    keras.Model(inputs, outputs)
  model = functional_model(inputs, outputs, name="deep_chain")
  assert len(model.layers) == limit + 201
  assert sys.getrecursionlimit() == limit


def test_limit_is_raised_inside_restored_after_and_never_lowered():
  start = sys.getrecursionlimit()
  with deep_graph_recursion(headroom=5_000):
    raised = sys.getrecursionlimit()
    assert raised >= 5_000
    with deep_graph_recursion(headroom=10):  # a nested builder: never lowers the limit
      assert sys.getrecursionlimit() == raised
    assert sys.getrecursionlimit() == raised  # only the outermost exit restores
  assert sys.getrecursionlimit() == start
  with pytest.raises(KeyError):
    with deep_graph_recursion():
      raise KeyError("restored on errors too")
  assert sys.getrecursionlimit() == start


# A fresh interpreter at Python's default limit, with 300 frames already on the stack (as a
# test runner or a user's framework would have), builds the deepest registered backbones and
# the deepest detector on V2-XL; the limit is back to 1000 afterwards. This is the suite's one
# V2-XL classifier build (it takes 20-45 s), so V2-XL's own checks are made on it here:
# tests/backbones/test_efficientnet.py and tests/models/test_classifier.py point here.
_FRESH_PROCESS = textwrap.dedent("""
    import sys
    assert sys.getrecursionlimit() == 1000, sys.getrecursionlimit()
    import detlab
    from detlab.backbones import BACKBONES
    from detlab.models.efficientdet import efficientdet
    # Where jedi is installed, importing TensorFlow raises the limit to 3000 (jedi sets it on
    # import); a fresh virtualenv has no jedi, so go back to Python's default.
    sys.setrecursionlimit(1000)

    def nested(frames, build):
      return build() if frames == 0 else nested(frames - 1, build)

    xl = nested(300, lambda: BACKBONES["efficientnetv2_xl"](include_top=True,
                                                             input_shape=(32, 32, 3)))
    print("xl", xl.count_params())
    print("xl_dropout", xl.get_layer("top_dropout").rate)
    names = {layer.name for layer in xl.layers}
    print("xl_block6af", int("block6af_project_conv" in names))
    print("xl_block6ag", int("block6ag_project_conv" in names))
    # The deepest of each other builder (V2-L is V2-XL's builder, shallower: not again).
    for name in ("efficientnet_b7", "inception_resnet_v2"):
      nested(300, lambda: BACKBONES[name](input_shape=(64, 64, 3)))
    detector = nested(300, lambda: efficientdet(BACKBONES["efficientnetv2_xl"], num_classes=3,
                                                 image_size=128, fpn_width=16, fpn_cells=1,
                                                 head_repeats=1))
    print("detector", detector.count_params())
    assert sys.getrecursionlimit() == 1000, sys.getrecursionlimit()
""")


@pytest.mark.slow
def test_deepest_builders_in_a_fresh_process_at_the_default_limit():
  result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = dict(line.split() for line in result.stdout.splitlines())
  # V2-XL (1000 classes): the paper's ~208M parameters, the reference code's dropout 0.4, and
  # stage 6's 32 blocks named a..z, then aa..af (keras apps' naming past 26 blocks).
  assert abs(int(lines["xl"]) - 208e6) / 208e6 < 0.01, lines["xl"]
  assert float(lines["xl_dropout"]) == 0.4
  assert (lines["xl_block6af"], lines["xl_block6ag"]) == ("1", "0")
  assert int(lines["detector"]) > int(lines["xl"]) * 0.9
