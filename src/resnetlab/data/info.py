"""What a model needs to know about its data: :class:`DataInfo`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..models.card import Preprocessing

__all__ = ["DataInfo"]


@dataclass(frozen=True)
class DataInfo:
    """Classes, geometry and normalization of a dataset as a model sees it.

    ``channels``, ``mean`` and ``std`` describe the stored images (per stored channel, [0, 1]
    scale). ``in_chans`` is the number of channels the model receives (grayscale data repeated
    to 3 channels has ``channels=1, in_chans=3``); None means the same as ``channels``.
    To prepare an image file, resize its shorter side to ``resize`` (None: ``image_size``),
    center-crop ``image_size``, scale to [0, 1], normalize, and repeat channels if needed.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    in_chans: int | None = None
    interpolation: str = "bilinear"
    #: the split the evaluation loader built with this info holds ("test", or "val" for an
    #: image folder with train/ and val/ only); None when not built by build_loaders
    eval_split: str | None = field(default=None, compare=False)
    #: image folders: the one line saying how the folder is read, and its header scan
    plan: str | None = field(default=None, compare=False)
    scan: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def model_channels(self) -> int:
        """Channels of the tensors the loaders yield."""
        return self.in_chans if self.in_chans is not None else self.channels

    def to_preprocessing(self) -> Preprocessing:
        """How to turn an image file into a model input, as the model's card holds it."""
        return Preprocessing(
            mean=self.mean,
            std=self.std,
            image_size=int(self.image_size),
            channels=int(self.channels),
            in_chans=int(self.model_channels),
            resize=int(self.resize if self.resize is not None else self.image_size),
            interpolation=self.interpolation,
        )

    def preprocessing(self) -> dict[str, Any]:
        """The JSON form of :meth:`to_preprocessing` (a weights sidecar's ``preprocessing``)."""
        return self.to_preprocessing().to_dict()
