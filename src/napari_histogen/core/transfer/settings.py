"""Every range and strength of the appearance transfer, with the paper's values as defaults.

Step numbers count the denoising steps that actually run, from 0 at the first one: with
``steps=100`` and ``skip_steps=32`` the chain runs 68 steps (timesteps 671 .. 1 of 1000),
numbered 0..67. The AstraZeneca paper gives 100 DDIM steps, the swap at 32x32 tokens for steps
10-70 and at 64x64 tokens for steps 10-90, AdaIN for steps 20-100; where it is silent the
reference's values are used (skip 32, contrast 1.67, swap guidance 3.5 falling linearly to
1.75, structure keys/values re-injected at counter 10, 15, ..., 35, edit-friendly inversion
with text guidance 3.5, FreeU on every UNet call).

The swap ranges and the structure steps are read the way the reference code
(garibida/cross-image-attention) reads them: from a step counter that its step callback sets
*after* each step, so during step ``k`` the attention sees counter ``k - 1`` (0 at step 0).
The ranges ``[start, end)`` below are in that counter, the reference's configuration values;
with the defaults the swaps run at steps 11..67 and the structure's keys/values are re-injected
at steps 11, 16, ..., 36 (:meth:`TransferSettings.swap_counter`). AdaIN reads the step just
run (no lag), as in the reference: after steps 20..67.

Swap resolutions are token grids of Stable Diffusion's decoder for a 512x512 image
(latent 64x64). At another working size they refer to the same decoder levels: a range given
for 32x32 tokens applies to the level with ``32 * latent / 64`` tokens per side (so a 64 px
tiny test model with an 8x8 latent swaps at 4x4 and 8x8).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..errors import HistogenInputError

__all__ = ["SwapRange", "TransferSettings", "DEFAULT_PROMPT", "INVERSIONS", "ADAIN_MODES", "RENDER_MODES"]

#: One fixed sentence for all three branches (the reference uses "A photo of a {domain}").
DEFAULT_PROMPT = "A photo of a histopathology tissue section"
INVERSIONS = ("edit_friendly", "ddim")
ADAIN_MODES = ("masked", "global", "off")
RENDER_MODES = ("mean", "scheme", "mask")


@dataclass(frozen=True)
class SwapRange:
    """Swap keys/values in decoder self-attention layers with ``tokens`` x ``tokens`` tokens
    (at the 512 px reference size) while the reference's step counter is in ``[start, end)``
    (steps ``start + 1 .. end``, see :meth:`TransferSettings.swap_counter`)."""

    tokens: int
    start: int
    end: int


def _default_swaps() -> tuple:
    return (SwapRange(32, 10, 70), SwapRange(64, 10, 90))


@dataclass
class TransferSettings:
    """Settings of one appearance transfer (all defaults: the paper, else the reference).

    Parameters
    ----------
    steps : int
        DDIM timesteps of the whole chain (100).
    skip_steps : int
        Noisiest steps not run (32, the reference's edit-friendly start; 0 = from pure noise).
    inversion : {"edit_friendly", "ddim"}
        Edit-friendly DDPM inversion (noise maps replayed; exact reconstruction) or
        deterministic DDIM inversion.
    inversion_guidance : float
        Text classifier-free guidance while inverting with edit-friendly inversion (3.5, the
        reference; 1 = none, half the cost). Its noise maps absorb the difference to the
        unguided denoising. DDIM inversion always runs at guidance 1 (without stored noise maps
        only an unguided inversion is retraced by the unguided denoising), see
        :attr:`inversion_guidance_used`.
    prompt : str
        The sentence for all branches (no text guidance during the transfer).
    swap : bool
        Cross-image attention on/off (off, with AdaIN off, is plain inversion + denoising).
    swap_ranges : tuple of SwapRange
        Where and when the output takes the appearance's keys and values (in the reference's
        step counter, which lags one step: (32, 10, 70) swaps at steps 11..70).
    reference_latent : int
        Latent side the token sides of ``swap_ranges`` refer to (64 = 512 px images).
    structure_kv_every, structure_kv_until : int
        At swap steps whose counter ``c`` has ``c % every == 0 and c < until`` the output takes
        the structure branch's keys and values instead (reference: 5, 40, i.e. steps 11, 16,
        ..., 36; every 0 = never).
    contrast : float
        Attention contrast on the swapped maps, ``A <- clip((A - mean) * c + mean, 0, 1)`` (1.67).
    swap_guidance_start, swap_guidance_end : float
        Swap guidance ``eps = eps_off + s (eps_on - eps_off)``, ``s`` linear from start to end
        over the steps run (3.5 -> 1.75); 1 and 1 = no second pass.
    adain : {"masked", "global", "off"}
        Per-class masked AdaIN, one class per step, alternating with the foreground first (the
        paper's method: labelled classes by id, then unlabelled 0; two classes put the
        foreground on the even steps); global AdaIN (the baseline); or none.
    adain_start, adain_end : int
        AdaIN after steps ``start <= step < end`` (20, 100).
    adain_unlabelled : bool
        Treat label 0 (unlabelled) as a class of its own when both masks have it.
    render : {"mean", "scheme", "mask"}
        The structure image: the target mask painted with each class's mean colour in the source
        image (default, our choice: the structure branch starts from plausible stain colours);
        painted with the class scheme's colours; or the mask itself as a grey image (class id
        ``c`` at ``255 c / max id``: the paper inverts "the mask"). See
        :func:`~napari_histogen.core.transfer.render.render_structure`.
    freeu : bool
        FreeU on the UNet's backbone features on every call, inversions included, as the
        reference (:mod:`~napari_histogen.core.transfer.freeu`); off = the plain UNet.
    inversion_seed : int
        Seed of the appearance image's edit-friendly noise (fixed, so its inversion is cached
        across runs and seeds). Output ``k`` of a request with seed ``s`` inverts its structure
        with seed ``s + k``.
    size : int or None
        Working size in pixels (square); None = the model's native size (512 for SD 1.5).
        Inputs of another size are resized to it and outputs back to the target mask's size.
    batch_targets : int
        Target masks denoised together in one batch (0 = 4 on CUDA, 1 on CPU).
    inversion_batch : int
        Timesteps evaluated together in edit-friendly inversion (its steps are independent).
    attention_chunk_mb : int
        Memory bound for the explicit attention scores of a swapped layer (queries chunked).
    """

    steps: int = 100
    skip_steps: int = 32
    inversion: str = "edit_friendly"
    inversion_guidance: float = 3.5
    prompt: str = DEFAULT_PROMPT
    swap: bool = True
    swap_ranges: tuple = field(default_factory=_default_swaps)
    reference_latent: int = 64
    structure_kv_every: int = 5
    structure_kv_until: int = 40
    contrast: float = 1.67
    swap_guidance_start: float = 3.5
    swap_guidance_end: float = 1.75
    adain: str = "masked"
    adain_start: int = 20
    adain_end: int = 100
    adain_unlabelled: bool = True
    render: str = "mean"
    freeu: bool = True
    inversion_seed: int = 0
    size: int | None = None
    batch_targets: int = 0
    inversion_batch: int = 8
    attention_chunk_mb: int = 256

    # -- derived ----------------------------------------------------------------------------
    @property
    def steps_run(self) -> int:
        return int(self.steps) - int(self.skip_steps)

    def swap_sides(self, latent_side: int) -> dict[int, tuple[int, int]]:
        """Token side at ``latent_side`` -> [start, end) of its swap steps."""
        out: dict[int, tuple[int, int]] = {}
        for rng in self.swap_ranges:
            side = int(round(rng.tokens * latent_side / self.reference_latent))
            if side >= 1:
                out[side] = (int(rng.start), int(rng.end))
        return out

    @staticmethod
    def swap_counter(step: int) -> int:
        """The step counter the swap schedule reads during step ``step`` (the reference's one-step lag).

        The reference's step callback stores the index of the step just run, so the attention
        of step ``k`` reads ``k - 1``; before the first callback the counter is 0.
        """
        return max(int(step) - 1, 0)

    def swap_step(self, step: int, side_range: tuple[int, int]) -> bool:
        """Whether step ``step`` swaps in a layer whose range (in the counter) is ``side_range``."""
        start, end = side_range
        return self.swap and int(start) <= self.swap_counter(step) < int(end)

    def structure_step(self, step: int) -> bool:
        """Whether a swap at step ``step`` takes the structure's keys and values (read in the counter)."""
        every = int(self.structure_kv_every)
        counter = self.swap_counter(step)
        return every > 0 and counter % every == 0 and counter < int(self.structure_kv_until)

    @property
    def inversion_guidance_used(self) -> float:
        """Text guidance the inversion actually uses: the setting for edit-friendly, 1 for DDIM."""
        return float(self.inversion_guidance) if self.inversion == "edit_friendly" else 1.0

    def swap_guidance(self, step: int) -> float:
        """The swap guidance scale at ``step`` (linear from start to end over the steps run)."""
        n = self.steps_run
        if n <= 1:
            return float(self.swap_guidance_start)
        return float(self.swap_guidance_start + (self.swap_guidance_end - self.swap_guidance_start) * step / (n - 1))

    @property
    def uses_swap_guidance(self) -> bool:
        return not (self.swap_guidance_start == 1.0 and self.swap_guidance_end == 1.0)

    def adain_step(self, step: int) -> bool:
        return self.adain != "off" and int(self.adain_start) <= step < int(self.adain_end)

    # -- checks and records -----------------------------------------------------------------
    def check(self) -> "TransferSettings":
        if not 2 <= int(self.steps) <= 500:
            raise HistogenInputError(f"Steps must be between 2 and 500 (the paper: 100), not {self.steps}.")
        if not 0 <= int(self.skip_steps) < int(self.steps):
            raise HistogenInputError(f"Skipped steps must be between 0 and steps - 1 ({int(self.steps) - 1}), "
                                     f"not {self.skip_steps}.")
        if self.inversion not in INVERSIONS:
            raise HistogenInputError(f"Unknown inversion '{self.inversion}'; choose {' or '.join(INVERSIONS)}.")
        if self.adain not in ADAIN_MODES:
            raise HistogenInputError(f"Unknown AdaIN mode '{self.adain}'; choose one of {', '.join(ADAIN_MODES)}.")
        if self.render not in RENDER_MODES:
            raise HistogenInputError(f"Unknown structure rendering '{self.render}'; choose {' or '.join(RENDER_MODES)}.")
        for name in ("inversion_guidance", "contrast", "swap_guidance_start", "swap_guidance_end"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or not 0 <= value <= 30:
                raise HistogenInputError(f"{name.replace('_', ' ')} must be between 0 and 30, not {value}.")
        for rng in self.swap_ranges:
            if not isinstance(rng, SwapRange) or rng.tokens < 1 or rng.start < 0 or rng.end < rng.start:
                raise HistogenInputError(f"Swap range {rng!r} is not valid: give tokens >= 1 and 0 <= start <= end.")
        if int(self.adain_start) < 0 or int(self.adain_end) < int(self.adain_start):
            raise HistogenInputError("The AdaIN range must satisfy 0 <= start <= end.")
        if self.size is not None and (int(self.size) < 64 or int(self.size) % 64):
            raise HistogenInputError(f"Working size must be a multiple of 64 px (e.g. 512), not {self.size}.")
        if not self.prompt or not str(self.prompt).strip():
            raise HistogenInputError("The prompt is empty; give one sentence describing the images.")
        return self

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["swap_ranges"] = [[r.tokens, r.start, r.end] for r in self.swap_ranges]
        return data

    def inversion_key(self) -> tuple:
        """The settings an inversion depends on (part of the inversion cache key)."""
        return (int(self.steps), int(self.skip_steps), self.inversion, self.inversion_guidance_used, self.prompt,
                bool(self.freeu))

    @classmethod
    def from_dict(cls, data: dict) -> "TransferSettings":
        data = dict(data)
        if "swap_ranges" in data:
            data["swap_ranges"] = tuple(r if isinstance(r, SwapRange) else SwapRange(*map(int, r))
                                        for r in data["swap_ranges"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HistogenInputError(f"Unknown transfer settings: {', '.join(unknown)}.")
        return cls(**data)
