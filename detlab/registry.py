"""Imports every module that registers gin configurables, so gin files can name them."""
# pylint: disable=unused-import
from detlab import backbones  # noqa: F401
from detlab.data import classification_input, detection_input  # noqa: F401
from detlab.detection import anchors, losses, postprocess  # noqa: F401
from detlab.models import classifier, efficientdet  # noqa: F401
from detlab.models import joint, segmentation  # noqa: F401
from detlab.segmentation import loss as segmentation_loss  # noqa: F401
from detlab.data import segmentation_input  # noqa: F401
from detlab.training import optimizer  # noqa: F401
from detlab.tasks import classification as classification_task  # noqa: F401
from detlab.tasks import segmentation as segmentation_task  # noqa: F401
from detlab.tasks import joint as joint_task  # noqa: F401
from detlab.tasks import instance_segmentation as instance_segmentation_task  # noqa: F401
from detlab.training import experiment  # noqa: F401
