"""Backbones. Each entry builds a tf_keras Model returning `{str(level): tensor}`.

The table of contents: one line per registered builder (all are gin-registered too).
"""
from detlab.backbones import efficientnet

BACKBONES = {
    "efficientnet_b0": efficientnet.efficientnet_b0,
    "efficientnet_b1": efficientnet.efficientnet_b1,
    "efficientnet_b2": efficientnet.efficientnet_b2,
    "efficientnet_b3": efficientnet.efficientnet_b3,
    "efficientnet_b4": efficientnet.efficientnet_b4,
    "efficientnet_b5": efficientnet.efficientnet_b5,
    "efficientnet_b6": efficientnet.efficientnet_b6,
    "efficientnet_b7": efficientnet.efficientnet_b7,
}
