"""The bases of the domain's models: a field a model does not declare is an error (a typo in a
spec, a payload that does not fit), never silently dropped."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    """A model that refuses undeclared fields."""

    model_config = ConfigDict(extra="forbid")


class FrozenModel(Model):
    """A :class:`Model` whose instances cannot be changed once made."""

    model_config = ConfigDict(frozen=True)
