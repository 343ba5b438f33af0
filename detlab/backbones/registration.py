"""Gin registration of backbone builders, the same way for every family.

A registered builder is a plain function `name(**kwargs) -> keras.Model`: what gin binds as
`@name`, what `detlab.backbones.BACKBONES` lists and what `input_convention` recognises (by
identity, else by `__name__`). It calls the family's build function with the variant's fixed
arguments plus the caller's.
"""
from typing import Callable

import gin
import tf_keras as keras


def registered_builder(name: str, doc: str, build: Callable[..., keras.Model], /,
                       **fixed) -> Callable[..., keras.Model]:
  """Registers `name(**kwargs) = build(**fixed, **kwargs)` with gin (module detlab.backbones)
  and returns it; `doc` is its docstring, its `__module__` that of `build`."""

  def builder(**kwargs) -> keras.Model:
    return build(**fixed, **kwargs)

  builder.__name__ = builder.__qualname__ = name
  builder.__doc__ = doc
  builder.__module__ = build.__module__
  return gin.register(builder, module="detlab.backbones")
