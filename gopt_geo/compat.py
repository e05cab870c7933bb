"""The one place where gopt-geo reaches into third-party internals.

timm and torchgeo expose what gopt-geo needs only through private names (leading
underscore), which may move or change in any release. Every such use goes through a
function here, with a comment saying what it does, why the public API does not do it,
and what to look for when it breaks, so that an upgrade has one file to check.
Tested with timm 1.0.31 and torchgeo 0.10.1 (requirements.lock).

The imports are inside the functions: importing this module costs nothing, and a name
that a new release removed fails where it is used, with that use's comment beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os

    from torch import Tensor, nn


def timm_module_list(
    model: nn.Module, flatten_sequential: bool
) -> Iterator[tuple[str, str, nn.Module]]:
    """``(new_name, old_name, module)`` for ``model``'s children in execution order.

    timm internal: ``timm.models._features._module_list``, the walk timm's own
    FeatureDictNet uses to run a model stage by stage (top-level children, optionally
    one Sequential level flattened, as EfficientNet's ``blocks.0``). gopt-geo runs the
    stages itself to inject prompts between them, and must walk them exactly as timm
    does for ``feature_info``'s module names to match. Public alternative:
    ``timm.create_model(..., features_only=True)`` builds the same walk but gives no hook
    between stages.
    """
    from timm.models._features import _module_list

    return iter(_module_list(model, flatten_sequential=flatten_sequential))


def timm_adapt_input_conv(in_chans: int, weight: Tensor) -> Tensor:
    """A stem conv weight ``[out, 3, k, k]`` widened to ``in_chans`` input channels.

    timm internal: ``timm.models._manipulate.adapt_input_conv``, what timm applies to
    pretrained weights for ``in_chans != 3`` (the RGB filters repeated over the new
    channels and rescaled so activations keep their magnitude). The early-fusion
    baseline widens an already built, already loaded stem, which timm's public
    ``create_model(in_chans=...)`` cannot do for local or packaged weights.
    """
    from timm.models._manipulate import adapt_input_conv

    return adapt_input_conv(in_chans, weight)


def timm_vit_pos_embed(model: nn.Module, x: Tensor) -> Tensor:
    """Patch tokens ``[B, h, w, D]`` -> tokens ``[B, prefix + h*w, D]`` with position
    embeddings added and the class/register tokens prepended.

    timm internal: ``VisionTransformer._pos_embed``, the step of ``forward_features``
    between the patch embedding and the blocks; it resamples the position embedding for
    ``dynamic_img_size`` and handles every prefix-token layout. gopt-geo runs the blocks
    one by one (prompts go between them), so it calls the steps of ``forward_features``
    itself; ``forward_intermediates`` gives no hook between blocks.
    """
    return model._pos_embed(x)


def torchgeo_load_warp_file(dataset: Any, filepath: str | os.PathLike[str], crs: Any) -> Any:
    """torchgeo's own opening of one raster file for ``dataset``: a rasterio reader, or a
    WarpedVRT when the file must be reprojected to ``crs`` (or its nodata overridden).

    torchgeo internal: ``torchgeo.datasets.RasterDataset._load_warp_file``, the hook
    torchgeo calls for every file it indexes and reads. gopt-geo's rasters override it to
    place files without a CRS on a pixel grid (torchgeo cannot place them) and hand every
    other file back to torchgeo here. Called unbound, so that it is torchgeo's
    implementation whatever the caller's class hierarchy; it also reads the dataset's
    ``crs``/``nodata`` and private ``_compute_affine_*`` helpers, so ``dataset`` must be
    a ``RasterDataset``.
    """
    from torchgeo.datasets import RasterDataset

    return RasterDataset._load_warp_file(dataset, filepath, crs)
