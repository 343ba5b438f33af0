"""Backbones. Each entry builds a tf_keras Model returning `{str(level): tensor}`.

The table of contents: one line per registered builder (all are gin-registered too).
"""
from detlab.backbones import efficientnet, efficientnet_v2
from detlab.backbones import (inception_resnet, inception_v1, inception_v2, inception_v3,
                              inception_v4, xception)

BACKBONES = {
    "efficientnet_b0": efficientnet.efficientnet_b0,
    "efficientnet_b1": efficientnet.efficientnet_b1,
    "efficientnet_b2": efficientnet.efficientnet_b2,
    "efficientnet_b3": efficientnet.efficientnet_b3,
    "efficientnet_b4": efficientnet.efficientnet_b4,
    "efficientnet_b5": efficientnet.efficientnet_b5,
    "efficientnet_b6": efficientnet.efficientnet_b6,
    "efficientnet_b7": efficientnet.efficientnet_b7,
    "efficientnetv2_b0": efficientnet_v2.efficientnetv2_b0,
    "efficientnetv2_b1": efficientnet_v2.efficientnetv2_b1,
    "efficientnetv2_b2": efficientnet_v2.efficientnetv2_b2,
    "efficientnetv2_b3": efficientnet_v2.efficientnetv2_b3,
    "efficientnetv2_s": efficientnet_v2.efficientnetv2_s,
    "efficientnetv2_m": efficientnet_v2.efficientnetv2_m,
    "efficientnetv2_l": efficientnet_v2.efficientnetv2_l,
    "efficientnetv2_xl": efficientnet_v2.efficientnetv2_xl,
    "inception_v1": inception_v1.inception_v1,
    "inception_v2": inception_v2.inception_v2,
    "inception_v3": inception_v3.inception_v3,
    "inception_v4": inception_v4.inception_v4,
    "inception_resnet_v1": inception_resnet.inception_resnet_v1,
    "inception_resnet_v2": inception_resnet.inception_resnet_v2,
    "xception": xception.xception,
}
