"""The pictures a user opens: tiles upscaled to >= 320 px, predictions drawn above a stated
score threshold, labels that never cover one another, captions kept inside their tiles, and
the PNG panels showing the pixels the data set holds whatever the backbone's convention."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from detlab import io as detlab_io
from detlab.backbones.conventions import IMAGENET_MEAN_STD, MINUS_ONE_TO_ONE, MINUS_ONE_TO_ONE_V2
from detlab.evaluation import visualize

NAMES = {1: "rectangle", 2: "ellipse", 3: "triangle"}


def _grey(height, width, value=100):
  return np.full([height, width, 3], value, np.uint8)


@pytest.mark.parametrize("convention", [IMAGENET_MEAN_STD, MINUS_ONE_TO_ONE,
                                        MINUS_ONE_TO_ONE_V2])
def test_to_uint8_inverts_the_backbones_normalization(convention):
  pixels = np.random.RandomState(0).randint(0, 256, (2, 8, 8, 3)).astype(np.uint8)
  normalized = convention.normalize(pixels).numpy()
  np.testing.assert_array_equal(convention.to_uint8(normalized), pixels)


def test_inception_images_drawn_with_imagenet_statistics_would_be_wrong():
  """The case the convention argument exists for: [-1, 1] inputs un-normalized with
  ImageNet's mean/std give other colours."""
  pixels = np.full((1, 2, 2, 3), 200, np.uint8)
  normalized = MINUS_ONE_TO_ONE.normalize(pixels).numpy()
  assert np.abs(IMAGENET_MEAN_STD.to_uint8(normalized).astype(int) - 200).max() > 50


def test_small_images_are_upscaled_to_320_and_large_ones_kept():
  square = visualize.draw_panel(_grey(128, 128), [], [], [], [], NAMES)
  wide = visualize.draw_panel(_grey(32, 48), [], [], [], [], NAMES)
  large = visualize.draw_panel(_grey(400, 600), [], [], [], [], NAMES)
  assert square.size == (320, 320) and wide.size == (480, 320) and large.size == (600, 400)


def test_boxes_scale_with_the_image():
  """A ground-truth box in the 128-px image lands 2.5x further in the 320-px panel."""
  panel = np.asarray(visualize.draw_panel(_grey(128, 128), [[40, 40, 80, 80]], [], [], [],
                                          NAMES))
  green = np.argwhere(np.all(panel == visualize.GROUND_TRUTH, axis=-1))
  assert green.min(0).tolist() == [100, 100] and green.max(0).tolist()[0] in (200, 201)


def _assert_disjoint_inside(rects, width, height):
  placed = [r for r in rects if r is not None]
  for left, top, right, bottom in placed:
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
  for a, b in itertools.combinations(placed, 2):
    assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_labels_of_overlapping_predictions_do_not_overlap():
  """The old panel wrote every label at its box's top-left corner: two boxes that nearly
  coincide piled 'ellipse 0.6…' onto 'rectangle 0.4…'."""
  boxes = [[50, 50, 180, 200], [55, 52, 175, 190], [0, 0, 100, 100], [300, 250, 320, 320]]
  sizes = [(110, 21), (120, 21), (90, 21), (100, 21)]
  rects = visualize.place_labels(boxes, sizes, (320, 320))
  assert all(r is not None for r in rects)
  assert rects[0] == (50, 50 - 21, 160, 50)  # the first label: just above its box
  _assert_disjoint_inside(rects, 320, 320)


def test_labels_without_room_are_dropped_never_stacked():
  rects = visualize.place_labels([[0, 10, 90, 60]] * 12, [(200, 30)] * 12, (320, 90))
  assert rects[:3] == [(10, 0, 210, 30), (10, 30, 210, 60), (10, 60, 210, 90)]
  assert rects[3:] == [None] * 9  # 90 px hold three 30-px labels
  assert visualize.place_labels([[0, 0, 10, 10]], [(321, 10)], (320, 90)) == [None]


def test_predictions_below_the_threshold_are_not_drawn():
  image, gt = _grey(128, 128), [[10, 10, 50, 50]]
  plain = np.asarray(visualize.draw_panel(image, gt, [], [], [], NAMES, 0.3))
  low = visualize.draw_panel(image, gt, [[60, 60, 120, 120]], [0.29], [0], NAMES, 0.3)
  high = visualize.draw_panel(image, gt, [[60, 60, 120, 120]], [0.31], [0], NAMES, 0.3)
  np.testing.assert_array_equal(np.asarray(low), plain)
  changed = np.any(np.asarray(high) != plain, axis=-1)
  assert changed[150:300, 150:300].any() and low.info["predictions_drawn"] == 0
  assert high.info["predictions_drawn"] == 1


def test_detection_grid_states_the_threshold_in_a_header_on_ram():
  """Tiles of different sizes, written to TF's in-memory file system (PIL can't write there)."""
  path = "ram://visualize_test/eval_detections.png"
  tf.io.gfile.makedirs("ram://visualize_test")
  images = [_grey(128, 128), _grey(96, 160)]
  detections = [(np.array([[20, 20, 90, 90], [22, 25, 88, 95]]), np.array([0.8, 0.6]),
                 np.array([0, 1])), (np.zeros([0, 4]), np.zeros([0]), np.zeros([0], int))]
  visualize.detection_grid(images, [np.zeros([0, 4]), [[10, 10, 40, 40]]], detections, NAMES,
                           0.3, path)
  png = detlab_io.read_png(path)
  # cells as large as the largest tile (533 x 320), side by side, under the header
  assert png.shape[1] == 2 * 533 + visualize.GAP
  header = png[:png.shape[0] - 320]
  assert len(header) >= 14 and len(np.unique(header.reshape(-1, 3), axis=0)) > 2
  assert np.all(header == visualize.TEXT, axis=-1).any()
  tile = png[png.shape[0] - 320:, :320]
  assert np.all(tile == visualize.LABEL_FILL, axis=-1).any()


def test_classification_captions_stay_inside_their_tiles(tmp_path):
  names = {0: "cat", 1: "a rather long class name that would run into the next tile",
           2: "Supercalifragilisticexpialidocious_without_any_space_to_break_at"}
  images = np.stack([_grey(128, 128, 60)] * 3)
  path = str(tmp_path / "eval_images.png")
  visualize.classification_grid(images, [0, 1, 2], [0, 2, 1], path, names, [0.9, 0.4, 0.3])
  png = detlab_io.read_png(path)
  assert png.shape[1] == 3 * 320 + 2 * visualize.GAP
  image_rows = np.flatnonzero(np.all(png[:, :320] == 60, axis=(1, 2)))
  assert len(image_rows) == 320 and image_rows[0] > 0  # the 320-px image, under a header
  captions = png[image_rows[-1] + 1:]
  assert np.all(captions == visualize.RIGHT, axis=-1)[:, :320].any()
  assert np.all(captions == visualize.WRONG, axis=-1)[:, 320:].any()
  for column in (320, 2 * 320 + visualize.GAP):  # the gaps between tiles stay background
    assert np.all(png[image_rows[0]:, column:column + visualize.GAP] == visualize.BACKGROUND)
  assert np.all(captions[:, -3:] == visualize.BACKGROUND)  # nor past the last tile's edge


def test_segmentation_rows_upscale_label_maps_by_nearest_neighbour():
  image = np.zeros([64, 80, 3], np.uint8)
  truth = np.zeros([64, 80], np.int32)
  truth[10:30, 10:50], truth[:3] = 2, 255
  predicted = np.where(truth == 255, 0, truth)
  predicted[40:60, 40:70] = 15
  path = "ram://visualize_test/eval_segmentation.png"
  tf.io.gfile.makedirs("ram://visualize_test")
  visualize.segmentation_rows([image], [truth], [predicted], path, {0: "bg", 2: "bicycle"})
  png = detlab_io.read_png(path)
  row = png[png.shape[0] - 320:]
  assert row.shape[1] == png.shape[1] == 3 * 400 + 2 * visualize.GAP
  colours = visualize.palette(16)
  expected = {tuple(np.round(0.5 * c).astype(int)) for c in colours[[0, 2]]} | {(128,) * 3}
  truth_panel = row[:, 400 + visualize.GAP:800 + visualize.GAP].reshape(-1, 3)
  assert {tuple(int(v) for v in c) for c in np.unique(truth_panel, axis=0)} == expected
  above = png[:png.shape[0] - 320]  # header and legend: a swatch for every class shown
  for c in (0, 2, 15):
    assert np.all(above == colours[c], axis=-1).any(), c


def test_palette_is_pascal_vocs():
  colours = visualize.palette(21)
  assert colours[1].tolist() == [128, 0, 0] and colours[15].tolist() == [192, 128, 128]
  assert colours[20].tolist() == [0, 64, 128]


def test_stack_pngs_skips_missing_files_and_pads_to_the_widest():
  tf.io.gfile.makedirs("ram://visualize_stack")
  detlab_io.write_png("ram://visualize_stack/a.png", _grey(10, 30, 7))
  detlab_io.write_png("ram://visualize_stack/b.png", _grey(5, 50, 9))
  visualize.stack_pngs(["ram://visualize_stack/a.png", "ram://visualize_stack/none.png",
                        "ram://visualize_stack/b.png"], "ram://visualize_stack/both.png")
  png = detlab_io.read_png("ram://visualize_stack/both.png")
  assert png.shape == (15, 50, 3) and np.all(png[:10, :30] == 7) and np.all(png[10:] == 9)
  assert np.all(png[:10, 30:] == visualize.BACKGROUND)
