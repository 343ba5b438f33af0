"""README.md's commands and bindings resolve as documented, without training.

Every `python -m MODULE ...` in README.md that takes --gin_file/--gin_bindings (in ```bash
blocks and in `inline code`) is parsed as the command would parse it, and `configured_task()`
(the task `python -m detlab.train`, the API, export and the benchmark build) must be the task
its gin files name, with each binding's value where that setting takes effect:
TRAIN_FILE_PATTERN on the train input's file_pattern, NUM_CLASSES / IMAGE_SIZE on the model
builder, train.label_map_file on the task, Schedule.* on the schedule train() receives. Every
binding name README.md's prose mentions is checked too (PROSE_BINDINGS gives each a value;
a name README gains without a row here fails), and every gin file resolves to its task.
Scripts outside the repo use these names: a rename or a binding that stops taking effect
fails here first. Commands without gin arguments (export, infer, benchmark --exported,
data_tools) are not checked here.
"""
import ast
import inspect
import os
import re
import shlex

import gin
import pytest

from detlab import config
from detlab.layers.fake_quant import is_quantization_aware
from detlab.tasks.classification import ClassificationTask
from detlab.tasks.detection import DetectionTask
from detlab.tasks.joint import JointTask
from detlab.tasks.instance_segmentation import InstanceSegmentationTask
from detlab.tasks.segmentation import SegmentationTask
from detlab.training.experiment import configured_task, train

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
# Gin file name prefix -> the task that file trains (the last such file of a command decides).
TASK_OF_PREFIX = {"efficientdet_": DetectionTask, "classification_": ClassificationTask,
                  "segmentation_": SegmentationTask, "joint_": JointTask,
                  "instance_segmentation_": InstanceSegmentationTask}
# Placeholders README writes for "your file" / "each Dk": what they stand for here.
PLACEHOLDER_FILES = {"more.gin": [],
                     "efficientdet_dN.gin": ["efficientdet_d0.gin", "efficientdet_d7x.gin"],
                     "efficientdet_liteN.gin": ["efficientdet_lite0.gin",
                                                "efficientdet_lite3x.gin"]}
# train.* settings that train() hands to the task (detection's data files and COCO backend).
TASK_SETTINGS = ("label_map_file", "annotation_file", "coco_backend")

# Bindings README.md names in its prose rather than in a command, each with a value to check
# (README's own value where it gives one; a sample where it writes a placeholder such as OUT).
PROSE_BINDINGS = [
    (["efficientdet_d0.gin"], ["train/InputConfig.tfds_name = 'voc/2007'"]),
    (["efficientdet_d0.gin"], ["train.strategy = 'mirrored'", "train.tpu = 'NAME_OR_ADDRESS'"]),
    (["efficientdet_d0.gin"], ["train.init_checkpoint = 'efficientdet-d0'"]),
    (["efficientdet_d0.gin"], ["train.init_checkpoint = 'OUT'", "train.init_mode = 'backbone'"]),
    (["efficientdet_d0.gin"], ["train.seed = 7", "train.checkpoint_input = False",
                               "train.num_eval_images = 50"]),
    (["efficientdet_d0.gin"], ["train.coco_backend = 'pycocotools'"]),
    (["efficientdet_d0.gin"], ["DetectionTask.model_fn = @efficientdet"]),
    (["efficientdet_d0.gin"], ["DetectionTask.score_threshold = 0.5"]),
    (["efficientdet_d0_shapes.gin"], ["Schedule.epochs = 2", "Schedule.batch_size = 8",
                                      "train.task = @DetectionTask()",
                                      "DetectionTask.bn_momentum = 0.9"]),
    (["classification_efficientnetv2_b0.gin"], ["ClassificationTask.progressive = None"]),
    (["segmentation_d0_shapes.gin"], ["SegmentationTask.bn_momentum = 0.95"]),
    (["joint_d0_shapes.gin"], ["JointTask.seg_loss_weight = 0.5"]),
    (["instance_segmentation_d0_shapes.gin"], ["InstanceSegmentationTask.class_agnostic = False"]),
    (["instance_segmentation_d0.gin"], ["InstanceSegmentationTask.mask_upsample = 'transposed'"]),
    (["efficientdet_d0.gin"], ["PostprocessConfig.nms_mode = 'hard'"]),
    (["efficientdet_lite0_shapes.gin"], ["efficientdet.quantization_aware = True"]),
]


def _readme() -> str:
  with open(README, encoding="utf-8") as f:
    return f.read()


def readme_commands() -> list[str]:
  """Every `python -m ...` command in README.md, continuation lines joined: one per line of a
  fenced block (`&&` chains split) and each `inline code` span of the prose and tables."""
  text = _readme()
  pieces = []
  for block in FENCE.findall(text):
    pieces += block.replace("\\\n", " ").splitlines()
  pieces += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", FENCE.sub("", text))]
  return [part.strip() for piece in pieces for part in piece.split("&&")
          if part.strip().startswith("python -m ")]


def gin_arguments(command: str) -> tuple[str, list[str], list[str]]:
  """(module, gin files, gin bindings) of a README command; optional `[...]` parts count."""
  args = shlex.split(command.replace("[", " ").replace("]", " "), comments=True)
  files = [a.split("=", 1)[1] for a in args if a.startswith("--gin_file=")]
  bindings = [a.split("=", 1)[1] for a in args if a.startswith("--gin_bindings=")]
  return args[2], files, bindings


def checkable_commands() -> list[tuple[str, list[str], list[str]]]:
  """(command, gin files, bindings) for each README command with gin arguments, placeholders
  replaced (one case per file a placeholder stands for)."""
  cases = []
  for command in readme_commands():
    _, files, bindings = gin_arguments(command)
    if not files and not bindings:
      continue
    expanded = [[]]
    for name in files:
      options = PLACEHOLDER_FILES.get(name, [name])
      if not options:  # an optional "more files" placeholder: nothing to add
        continue
      expanded = [done + [option] for done in expanded for option in options]
    cases += [(command, f, bindings) for f in expanded]
  return cases


def _name_and_value(binding: str) -> tuple[str, str]:
  name, value = binding.split("=", 1)
  return name.strip(), value.strip()


def _train_argument(param: str):
  """What train() receives as `param` under the parsed config (a called reference called)."""
  value = gin.query_parameter(f"train.{param}")
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
  return value


def _model_setting(task, name: str):
  """num_classes / image_size as the model is built with them: the classification task passes
  its own to the builder; the other tasks' builders have them bound."""
  if isinstance(task, ClassificationTask):
    return getattr(task, name)
  return gin.get_bindings(task.model_fn)[name]


MACRO_TARGETS = {
    "TRAIN_FILE_PATTERN": lambda task: task.train_input.file_pattern,
    "EVAL_FILE_PATTERN": lambda task: task.eval_input.file_pattern,
    "NUM_CLASSES": lambda task: _model_setting(task, "num_classes"),
    "IMAGE_SIZE": lambda task: _model_setting(task, "image_size"),
}


def landed(task, name: str):
  """The value that binding `name` has where it takes effect, under the parsed config."""
  if name in MACRO_TARGETS:
    return MACRO_TARGETS[name](task)
  scope, _, selector = name.rpartition("/")
  configurable, param = selector.rsplit(".", 1)
  if configurable == "train" and not scope:
    if param == "task":
      return task
    if param in TASK_SETTINGS:
      return getattr(task, param)
    # A named parameter: train() takes removed ones in **kwargs only to refuse them.
    assert inspect.signature(train).parameters[param].kind == inspect.Parameter.KEYWORD_ONLY
    return _train_argument(param)
  if configurable == type(task).__name__ and not scope:
    return getattr(task, param)
  if configurable.endswith("InputConfig") and scope in ("train", "eval"):
    return getattr(getattr(task, f"{scope}_input"), param)
  if configurable == "Schedule" and not scope:
    return getattr(_train_argument("schedule"), param)
  if configurable == "OptimizerConfig" and not scope:
    return getattr(_train_argument("optimizer"), param)
  if configurable == "efficientdet" and param == "quantization_aware" and not scope:
    return is_quantization_aware(task.model_fn())  # the model train() would build
  if configurable == "PostprocessConfig" and not scope:
    return getattr(getattr(task, "detection", task).postprocess_config, param)
  raise AssertionError(f"README binding {name!r}: this test has no rule for where it takes "
                       "effect; add one to landed().")


def expected_task(files: list[str], bindings: list[str]) -> type:
  for binding in bindings:
    name, value = _name_and_value(binding)
    if name == "train.task":
      return {c.__name__: c for c in TASK_OF_PREFIX.values()}[value[1:].removesuffix("()")]
  tasks = [c for f in files for prefix, c in TASK_OF_PREFIX.items()
           if os.path.basename(f).startswith(prefix)]
  return tasks[-1]


def resolve(files: list[str], bindings: list[str]):
  """configured_task() under exactly these gin files and bindings."""
  with gin.unlock_config():  # an earlier test in this process may have left gin locked
    gin.clear_config()
    config.parse_gin(files, bindings)
    return configured_task()


def check_bindings(files: list[str], bindings: list[str]) -> None:
  task = resolve(files, bindings)
  assert type(task) is expected_task(files, bindings)  # pylint: disable=unidiomatic-typecheck
  for binding in bindings:
    name, value = _name_and_value(binding)
    got = landed(task, name)
    if value.endswith("()"):  # `@Name()`: the object that call made
      assert type(got).__name__ == value[1:-2], binding
    elif value.startswith("@"):  # `@name`: the function itself
      assert got.__name__ == value[1:], binding
    else:
      assert got == ast.literal_eval(value), f"{binding!r} took effect as {got!r}"


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()  # unlocks too


COMMANDS = checkable_commands()


def test_the_readme_parser_finds_the_documented_commands_and_bindings():
  """Guards the parser: the commands README documents today are found, with their bindings."""
  modules = {gin_arguments(command)[0] for command, _, _ in COMMANDS}
  assert {"detlab.train", "detlab.benchmark", "data_tools.convert_automl_checkpoint"} <= modules
  names = {_name_and_value(b)[0] for _, _, bindings in COMMANDS for b in bindings}
  assert {"TRAIN_FILE_PATTERN", "EVAL_FILE_PATTERN", "NUM_CLASSES", "IMAGE_SIZE",
          "train.annotation_file", "train.label_map_file", "train.init_checkpoint",
          "train.init_mode", "train.strategy", "train.tpu",
          "Schedule.num_train_images", "Schedule.batch_size"} <= names
  assert len(COMMANDS) >= 15


@pytest.mark.parametrize("command,files,bindings", COMMANDS,
                         ids=[f"{i}-{'+'.join(f)}" for i, (_, f, _) in enumerate(COMMANDS)])
def test_a_readme_command_resolves_with_its_bindings_in_effect(command, files, bindings):
  del command  # in the test id's place: the parameters say which
  check_bindings(files, bindings)


@pytest.mark.parametrize("files,bindings", PROSE_BINDINGS,
                         ids=[b[-1].split("=")[0].strip() for _, b in PROSE_BINDINGS])
def test_a_binding_readme_names_takes_effect(files, bindings):
  check_bindings(files, bindings)


def _prose_binding_names() -> set[str]:
  """Names of gin bindings (`configurable.param`, `scope/configurable.param`, a macro) that
  README.md's `inline code` outside commands mentions."""
  import detlab.registry  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  macros = set()
  for f in config.available_gin_files():
    with open(os.path.join(config.gin_configs_dir(), f), encoding="utf-8") as handle:
      macros |= set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", handle.read(), re.M))
  names = set()
  for span in re.findall(r"`([^`]+)`", FENCE.sub("", _readme())):
    if span.lstrip().startswith("python -m "):
      continue
    for token in re.findall(r"(?<![\w.$])((?:\w+/)?[A-Za-z_]\w*\.[a-z_]\w*)\s*(?==|$|\s)",
                            span.replace("--gin_bindings=", " ").strip("\"' ")):
      configurable = token.rpartition("/")[2].rsplit(".", 1)[0]
      if gin.config._REGISTRY.get_match(configurable):  # pylint: disable=protected-access
        names.add(token)
    if span in macros:
      names.add(span)
  return names


def test_every_binding_readme_names_is_checked_here():
  covered = {_name_and_value(b)[0] for _, bindings in PROSE_BINDINGS for b in bindings}
  covered |= {_name_and_value(b)[0] for _, _, bindings in COMMANDS for b in bindings}
  named = _prose_binding_names()
  assert {"train.strategy", "train.seed", "train.checkpoint_input",
          "DetectionTask.bn_momentum", "NUM_CLASSES"} <= named  # the harvest works
  assert named <= covered, f"README names bindings no test checks: {sorted(named - covered)}"


# A task add-on: it turns the detector file before it into another task.
ADD_ON_FILES = ("instance_segmentation_recipe.gin",)


def _data_file(name: str) -> bool:
  """A file that goes after a detector file: data-only, or a task add-on."""
  return not name.startswith(tuple(TASK_OF_PREFIX)) or name in ADD_ON_FILES


@pytest.mark.parametrize("name", config.available_gin_files())
def test_every_gin_file_resolves_to_its_task(name):
  """Each file alone (a data-only file after efficientdet_d0.gin) gives its task, with a model
  builder and its inputs on the gin file's data."""
  files = ["efficientdet_d0.gin", name] if _data_file(name) else [name]
  task = resolve(files, [])
  assert type(task) is expected_task(files, [])  # pylint: disable=unidiomatic-typecheck
  assert callable(task.model_fn)
  assert task.train_input.file_pattern == gin.query_parameter("%TRAIN_FILE_PATTERN")
  assert task.eval_input.file_pattern == gin.query_parameter("%EVAL_FILE_PATTERN")
  assert MACRO_TARGETS["NUM_CLASSES"](task) == gin.query_parameter("%NUM_CLASSES")
