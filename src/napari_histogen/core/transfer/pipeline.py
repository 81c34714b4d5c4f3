"""The denoising loop of mask-guided cross-image attention.

One :class:`TransferRunner` per (model, settings): it encodes images with the VAE, inverts
latents (:mod:`.inversion`), and denoises the branches of one or several target masks at once:

- **output** (one per target): starts from its structure's inverted latent and replays the
  structure's noise maps; in the swap layers/steps its self-attention reads the appearance's
  keys and values (the structure's own at the structure steps); swap guidance
  ``eps = eps_off + s (eps_on - eps_off)`` needs it twice (``out_swap``, ``out_noswap``);
  AdaIN renormalises it after the step;
- **appearance** (one per source): replays its own inversion;
- **structure** (one per target): replays its own inversion.

After every step, step callbacks ``cb(step, out, app)`` act on the output latents: AdaIN
(:class:`~napari_histogen.core.transfer.adain.AdainStep`) and any passed as ``step_callbacks``.
Together with the attention processors and FreeU's forward pre-hooks on the up-blocks
(:mod:`.freeu`, installed for every UNet call of an inversion or a transfer when
``settings.freeu``) this is the whole method: diffusers' UNet runs unmodified.

The optimised path (default) puts all branch items of a step in **one** UNet call and leaves
out what a step does not need, without changing the result: before the output first differs
from its structure (the first swap or AdaIN step) the structure item stands for it; the
``out_noswap`` item exists only on swap steps; the structure items are dropped after the last
structure step, the appearance item after its last use. The straightforward path
(``mode="straightforward"``, the reference's cost; used by the benchmark and to test the
optimised one against) runs two UNet calls per step over all three branches, explicit
attention everywhere, and inverts step by step over the whole chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..progress import check_cancel
from .adain import AdainStep, adain_classes, latent_mask
from .attention import SwapState, decoder_attention_sides, install_processors, restore_processors
from .freeu import FreeUHooks
from .inversion import Inversion, denoise_step, invert_ddim, invert_edit_friendly, make_schedule
from .settings import TransferSettings

__all__ = ["TransferRecord", "TransferRunner", "MODES"]

MODES = ("optimised", "straightforward")


@dataclass
class TransferRecord:
    """What a run did, for tests and inspection (pass one to record).

    ``swaps``: one dict per swapped layer call (step, layer, tokens, source, items);
    ``adain``: one dict per AdaIN application (step, target, class, and with ``keep_tensors``
    the output and appearance latents after it and the latent masks);
    ``roles``: the batch roles of every UNet call of the transfer; ``unet_calls``/``unet_items``;
    ``freeu``: one dict per FreeU change (block, channels, factors), inversions included.
    """

    swaps: list = field(default_factory=list)
    adain: list = field(default_factory=list)
    roles: list = field(default_factory=list)
    unet_calls: int = 0
    unet_items: int = 0
    keep_tensors: bool = True
    freeu: list = field(default_factory=list)


class TransferRunner:
    """Runs inversions and transfers for one loaded model with one set of settings."""

    def __init__(self, parts, settings: TransferSettings | None = None, *, mode: str = "optimised",
                 record: TransferRecord | None = None, keep_structure: bool = False, step_callbacks=()):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.parts = parts
        self.settings = (settings or TransferSettings()).check()
        self.mode = mode
        self.record = record
        self.keep_structure = keep_structure
        self.step_callbacks = list(step_callbacks)  # extra cb(step, out, app) after AdaIN, every step
        self.size = int(self.settings.size or parts.native_size)
        self.latent_side = self.size // parts.vae_scale_factor
        self.schedule = make_schedule(parts.scheduler_config, self.settings.steps, self.settings.skip_steps)
        self.state = SwapState()
        self.state.contrast = float(self.settings.contrast)
        self.state.chunk_bytes = int(self.settings.attention_chunk_mb) << 20
        self.state.explicit = mode == "straightforward"
        self.state.record = None if record is None else record.swaps
        present = decoder_attention_sides(parts.unet, self.latent_side)
        wanted = self.settings.swap_sides(self.latent_side) if self.settings.swap else {}
        self.state.sides = {side: rng for side, rng in wanted.items() if side in present}
        self.missing_sides = sorted(set(wanted) - set(present))
        self.unet_calls = 0

    # -- the network -------------------------------------------------------------------------
    def eps_fn(self, x, t, embeds):
        import torch

        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        out = self.parts.unet(x.to(self.parts.dtype), t, encoder_hidden_states=embeds.to(self.parts.dtype),
                              return_dict=False)[0]
        self.unet_calls += 1
        if self.record is not None:
            self.record.unet_calls += 1
            self.record.unet_items += int(x.shape[0])
        return out.float()

    def _processors(self):
        runner = self

        class _Ctx:
            def __enter__(self):
                runner.parts.lock.acquire()
                try:
                    self.previous = install_processors(runner.parts.unet, runner.state)
                    self.freeu = None
                    if runner.settings.freeu:
                        record = None if runner.record is None else runner.record.freeu
                        self.freeu = FreeUHooks(runner.parts.unet, record=record).__enter__()
                except BaseException:
                    runner.parts.lock.release()
                    raise
                return self

            def __exit__(self, *exc):
                try:
                    runner.state.enabled = False
                    if self.freeu is not None:
                        self.freeu.__exit__(*exc)
                    restore_processors(runner.parts.unet, self.previous)
                finally:
                    runner.parts.lock.release()
                return False

        return _Ctx()

    def encode(self, images: np.ndarray):
        """Latents (N, 4, h, w) float32 of RGB uint8 images (N, H, W, 3) at the working size (the VAE's mode)."""
        import torch

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        out = []
        with torch.inference_mode():
            for img in images:
                x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
                lat = self.parts.vae.encode(x.to(self.parts.device, self.parts.dtype)).latent_dist.mode()
                out.append(lat.float() * self.parts.scaling_factor)
        return torch.cat(out)

    def decode(self, latents) -> list[np.ndarray]:
        """RGB uint8 images of latents (N, 4, h, w)."""
        import torch

        images = []
        with torch.inference_mode():
            for lat in latents:
                x = self.parts.vae.decode((lat[None] / self.parts.scaling_factor).to(self.parts.dtype)).sample
                x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                images.append(x[0].permute(1, 2, 0).cpu().numpy())
        return images

    # -- inversion ---------------------------------------------------------------------------
    def invert(self, latents, seeds, *, tick=None, cancel=None) -> Inversion:
        """Invert clean latents (B, 4, h, w) with the settings' inversion (one seed per latent)."""
        import torch

        s = self.settings
        cond = self.parts.encode_prompt(s.prompt)
        guidance = s.inversion_guidance_used  # DDIM: always 1, else the unguided denoising cannot retrace it
        uncond = self.parts.encode_prompt("") if guidance != 1.0 else None
        straight = self.mode == "straightforward"
        with torch.inference_mode(), self._processors():
            self.state.enabled = False
            if s.inversion == "ddim":
                return invert_ddim(self.eps_fn, latents, self.schedule, cond=cond, uncond=uncond,
                                   guidance=guidance, separate_cfg=straight, tick=tick, cancel=cancel)
            return invert_edit_friendly(self.eps_fn, latents, self.schedule, seeds=list(seeds), cond=cond,
                                        uncond=uncond, guidance=guidance,
                                        batch=1 if straight else s.inversion_batch, full_chain=straight,
                                        separate_cfg=straight, tick=tick, cancel=cancel)

    # -- a whole request -----------------------------------------------------------------------
    def generate(self, source_w: np.ndarray, structures: list, seeds: list[int], *, source_mask_w=None,
                 masks_w=None, per_group: int = 1, cache_key: tuple = (), progress=None,
                 cancel=None) -> tuple[list[np.ndarray], bool]:
        """The denoising of one request, in one place: the appearance's inversion (cached: many
        targets from one source pay for it once), then per group of ``per_group`` targets their
        structures' inversions, the transfer and the decoding.

        ``source_w`` (working size RGB), ``structures`` (one working-size RGB structure image per
        output), ``seeds`` (one per output), ``masks_w`` (working-size target masks, for masked
        AdaIN). ``progress(done, total)`` counts UNet steps. Returns the working-size images and
        whether the appearance inversion came from the cache.
        """
        from .inversion import image_sha256, inversion_cache

        s = self.settings
        n = len(structures)
        groups = [list(range(i, min(i + per_group, n))) for i in range(0, n, per_group)]
        k_run = len(self.schedule)
        cache = inversion_cache()
        key = ("app", str(self.parts.path or id(self.parts)), *cache_key, self.mode, image_sha256(source_w),
               s.inversion_key(), int(s.inversion_seed), self.size)
        app_inv = cache.get(key)
        cached = app_inv is not None
        total = (0 if cached else k_run) + len(groups) * 2 * k_run
        done = [0]

        def tick(steps: int) -> None:
            done[0] += int(steps)
            if progress is not None:
                progress(min(done[0], total), total)

        if not cached:
            app_inv = self.invert(self.encode(source_w), [s.inversion_seed], tick=tick, cancel=cancel)
            cache.put(key, app_inv)
        images: list = [None] * n
        for group in groups:
            check_cancel(cancel)
            struct_inv = self.invert(self.encode(np.stack([structures[k] for k in group])),
                                     [int(seeds[k]) for k in group], tick=tick, cancel=cancel)
            out = self.transfer(app_inv, struct_inv, source_mask=source_mask_w,
                                target_masks=None if masks_w is None else [masks_w[k] for k in group],
                                tick=tick, cancel=cancel)
            check_cancel(cancel)
            for k, img in zip(group, self.decode(out)):
                images[k] = img
        check_cancel(cancel)
        return images, cached

    # -- transfer ----------------------------------------------------------------------------
    def masks_at_latent(self, mask: np.ndarray) -> np.ndarray:
        return latent_mask(mask, (self.latent_side, self.latent_side))

    def adain_plan(self, source_mask, target_masks) -> tuple[list, list]:
        """Per target: the classes that take turns in masked AdaIN and the ones left out."""
        if self.settings.adain != "masked":
            return [None] * len(target_masks), [{} for _ in target_masks]
        src = self.masks_at_latent(source_mask)
        plans, left = [], []
        for tm in target_masks:
            classes, out = adain_classes(self.masks_at_latent(tm), src, include_unlabelled=self.settings.adain_unlabelled)
            plans.append(classes)
            left.append(out)
        return plans, left

    def transfer(self, app: Inversion, struct: Inversion, *, source_mask=None, target_masks=None, tick=None,
                 cancel=None):
        """Denoise the output of every target of ``struct`` (G) with appearance ``app`` (1); latents (G, 4, h, w)."""
        import torch

        s = self.settings
        g = struct.x_start.shape[0]
        if s.adain == "masked" and (source_mask is None or target_masks is None):
            raise ValueError("masked AdaIN needs the source mask and the target masks")
        classes, _ = self.adain_plan(source_mask, target_masks) if s.adain == "masked" else ([None] * g, None)
        masks = None
        if s.adain == "masked":
            src_lat = self.masks_at_latent(source_mask)
            masks = {"source": src_lat, "targets": [self.masks_at_latent(m) for m in target_masks]}
        with torch.inference_mode(), self._processors():
            if self.mode == "straightforward":
                return self._loop_straightforward(app, struct, classes, masks, tick, cancel)
            return self._loop(app, struct, classes, masks, tick, cancel)

    def _steps_of(self):
        s = self.settings
        k_run = len(self.schedule)
        swap = {k for k in range(k_run) if any(s.swap_step(k, rng) for rng in self.state.sides.values())}
        structure = {k for k in swap if s.structure_step(k)}
        adain_steps = {k for k in range(k_run) if s.adain_step(k)}
        return swap, structure, adain_steps

    def _callbacks(self, classes, masks) -> list:
        """Step callbacks ``cb(step, out, app)`` after every step: AdaIN first, then the runner's own."""
        s = self.settings
        k_run = len(self.schedule)
        record = None if self.record is None else self.record.adain
        keep = True if self.record is None else self.record.keep_tensors
        adain_cb = AdainStep(s.adain, [k for k in range(k_run) if s.adain_step(k)], classes=classes,
                             target_masks=None if masks is None else masks["targets"],
                             source_mask=None if masks is None else masks["source"], record=record, keep_tensors=keep)
        return [adain_cb, *self.step_callbacks]

    def _loop(self, app, struct, classes, masks, tick, cancel):
        import torch

        s = self.settings
        callbacks = self._callbacks(classes, masks)
        sched = self.schedule
        ef = struct.kind == "edit_friendly"
        eta = 1.0 if ef else 0.0
        g = struct.x_start.shape[0]
        cond = self.parts.encode_prompt(s.prompt)
        swap, structure, adain_steps = self._steps_of()
        last_struct = max(structure, default=-1)
        last_app = max(swap | adain_steps, default=-1)
        x_struct, x_app, x_out = struct.x_start.clone(), app.x_start.clone(), None
        for k in range(len(sched)):
            check_cancel(cancel)
            a_t, a_prev = sched.alpha[k], sched.alpha_prev[k]
            swap_k = k in swap
            scale = s.swap_guidance(k)
            two = swap_k and scale != 1.0
            if swap_k and x_out is None:
                x_out = x_struct.clone()
            roles, items = [], []
            if x_out is not None:
                roles += [("out_swap" if swap_k else "out", i) for i in range(g)]
                items.append(x_out)
                if two:
                    roles += [("out_noswap", i) for i in range(g)]
                    items.append(x_out)
            need_app = k <= last_app
            if need_app:
                roles.append(("app", 0))
                items.append(x_app)
            need_struct = x_out is None or k <= last_struct or self.keep_structure
            if need_struct:
                roles += [("struct", i) for i in range(g)]
                items.append(x_struct)
            self.state.roles, self.state.step, self.state.counter = roles, k, s.swap_counter(k)
            self.state.enabled, self.state.structure = swap_k, k in structure
            if self.record is not None:
                self.record.roles.append(tuple(roles))
            x = torch.cat(items)
            eps = self.eps_fn(x, sched.timesteps[k], cond.expand(x.shape[0], -1, -1))
            off = 0
            if x_out is not None:
                e_out = eps[off:off + g]
                off += g
                if two:
                    e_off = eps[off:off + g]
                    off += g
                    e_out = e_off + scale * (e_out - e_off)
                x_out = denoise_step(x_out, e_out, a_t, a_prev, eta=eta, z=struct.zs[:, k] if ef else None)
            if need_app:
                x_app = denoise_step(x_app, eps[off:off + 1], a_t, a_prev, eta=eta, z=app.zs[:, k] if ef else None)
                off += 1
            else:
                x_app = None  # past its last use
            if need_struct:
                x_struct = denoise_step(x_struct, eps[off:off + g], a_t, a_prev, eta=eta,
                                        z=struct.zs[:, k] if ef else None)
            else:
                x_struct = None
            if x_out is None and (k in adain_steps or self.step_callbacks):
                x_out = x_struct.clone()  # the output leaves its structure here
            if x_out is not None:
                for callback in callbacks:
                    callback(k, x_out, x_app)
            if tick is not None:
                tick(1)
        self.state.enabled = False
        self.last_structure = x_struct
        return x_out if x_out is not None else x_struct

    def _loop_straightforward(self, app, struct, classes, masks, tick, cancel):
        """The reference's way: output, appearance and structure in every call, two calls per step."""
        import torch

        s = self.settings
        callbacks = self._callbacks(classes, masks)
        sched = self.schedule
        ef = struct.kind == "edit_friendly"
        eta = 1.0 if ef else 0.0
        g = struct.x_start.shape[0]
        cond = self.parts.encode_prompt(s.prompt)
        swap, structure, adain_steps = self._steps_of()
        starts = [a for a, _ in self.state.sides.values()]
        ends = [b for _, b in self.state.sides.values()]
        lo, hi = (min(starts), max(ends)) if starts else (1, 0)
        x_out, x_app, x_struct = struct.x_start.clone(), app.x_start.clone(), struct.x_start.clone()
        roles = [("out_swap", i) for i in range(g)] + [("app", 0)] + [("struct", i) for i in range(g)]
        zs = None
        if ef:
            zs = torch.cat([struct.zs, app.zs, struct.zs])
        for k in range(len(sched)):
            check_cancel(cancel)
            a_t, a_prev = sched.alpha[k], sched.alpha_prev[k]
            x = torch.cat([x_out, x_app, x_struct])
            embeds = cond.expand(x.shape[0], -1, -1)
            self.state.roles, self.state.step, self.state.structure = roles, k, k in structure
            self.state.counter = s.swap_counter(k)
            self.state.enabled = bool(s.swap)
            if self.record is not None:
                self.record.roles.append(tuple(roles))
            e_on = self.eps_fn(x, sched.timesteps[k], embeds)
            self.state.enabled = False
            check_cancel(cancel)
            e_off = self.eps_fn(x, sched.timesteps[k], embeds)
            scale = s.swap_guidance(k)
            eps = e_off + scale * (e_on - e_off) if (scale > 1.0 and lo <= k <= hi) else e_on
            x = denoise_step(x, eps, a_t, a_prev, eta=eta, z=zs[:, k] if ef else None)
            x_out, x_app, x_struct = x[:g].clone(), x[g:g + 1].clone(), x[g + 1:].clone()
            for callback in callbacks:
                callback(k, x_out, x_app)
            if tick is not None:
                tick(1)
        self.last_structure = x_struct
        return x_out
