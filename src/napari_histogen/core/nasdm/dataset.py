"""NASDM training data, the torch side: the dihedral augmentation and the patch dataset."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import HistogenInputError
from .condition import make_condition
from .patchset import PatchSet

__all__ = ["dihedral", "NasdmPatchDataset"]


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square on axes 0 and 1 (a view).

    ``k % 4`` quarter turns (``np.rot90``), then a left-right flip when ``k >= 4``.
    """
    k = int(k)
    if not 0 <= k < 8:
        raise HistogenInputError(f"A dihedral transform is numbered 0..7, not {k}.")
    out = np.rot90(array, k % 4, axes=(0, 1))
    return out[:, ::-1] if k >= 4 else out


class NasdmPatchDataset(Dataset):
    """Torch dataset of NASDM training pairs from a :class:`PatchSet`.

    Parameters
    ----------
    patch_set : PatchSet
    refs : sequence of PatchRef, or 'train' / 'val'
        The windows to serve (e.g. ``patch_set.train``).
    augment : bool
        Apply a random one of the 8 flips/quarter turns (:func:`dihedral`) to the image
        and the instance map together. The draw uses ``generator`` if given, else
        torch's global generator, which ``torch.manual_seed`` seeds and the DataLoader
        seeds per worker, so seeded runs repeat.
    generator : torch.Generator, optional

    Items are dicts: ``image`` float32 ``(3, P, P)`` in ``[-1, 1]``; ``condition``
    float32 ``(K + 2, P, P)`` = :func:`~napari_histogen.core.nasdm.condition.make_condition`
    of the (transformed) window.
    """

    def __init__(self, patch_set: PatchSet, refs="train", *, augment: bool = True,
                 generator: torch.Generator | None = None):
        if isinstance(refs, str):
            if refs not in ("train", "val"):
                raise HistogenInputError(f"refs must be 'train', 'val' or a list of PatchRef, not {refs!r}.")
            refs = getattr(patch_set, refs)
        self.patch_set = patch_set
        self.refs = list(refs)
        self.augment = bool(augment)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict:
        if not -len(self.refs) <= index < len(self.refs):
            raise IndexError(f"patch {index} of {len(self.refs)}")
        image, inst, classes = self.patch_set.crop(self.refs[index])
        if self.augment:
            k = int(torch.randint(0, 8, (1,), generator=self.generator).item())
            image, inst = dihedral(image, k), dihedral(inst, k)
        image = np.array(image, dtype=np.uint8, copy=True)  # writable and contiguous, for torch
        inst = np.ascontiguousarray(inst)
        cond = make_condition(inst, classes, self.patch_set.class_ids)
        tensor = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32).div_(127.5).sub_(1.0)
        return {"image": tensor, "condition": torch.from_numpy(cond)}
