"""Building blocks shared by many models."""
from detlab.layers.normalization import batch_norm
from detlab.layers.mbconv import mbconv_block, fused_mbconv_block

__all__ = ["batch_norm", "mbconv_block", "fused_mbconv_block"]
