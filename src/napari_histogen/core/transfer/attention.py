"""Cross-image attention as diffusers attention processors on an unmodified UNet.

:func:`install_processors` gives every ``Attention`` module of a ``UNet2DConditionModel`` a
:class:`CrossImageAttnProcessor` (the official ``set_attn_processor`` API; the UNet's forward
is diffusers' own). All processors share one :class:`SwapState` that the denoising loop sets
before each UNet call: the step number, the role of each batch item (``out_swap``,
``out_noswap``, ``out``, ``app``, ``struct``, with the target each belongs to) and whether
this call swaps.

In decoder self-attention (``up_blocks.*.attn1``) with a configured token grid, during its
steps, each ``out_swap`` item keeps its own queries and attends to the keys and values of the
appearance item (or, at the structure steps, of its own structure item), with attention
contrast ``A <- clip((A - rowmean A) * c + rowmean A, 0, 1)`` on those maps. That needs the
explicit score matrix, computed in chunks of queries so that its memory stays under a bound.
Every other item and layer uses PyTorch's scaled-dot-product attention (or, for the
straightforward benchmark path, explicit attention everywhere).
"""

from __future__ import annotations

import math

__all__ = ["SwapState", "CrossImageAttnProcessor", "install_processors", "restore_processors",
           "explicit_attention", "decoder_attention_sides", "swap_layer_names"]


class SwapState:
    """What the current UNet call should do; shared by all processors of one UNet."""

    def __init__(self):
        self.enabled = False            # swap in this call
        self.step = -1                  # denoising step (0 = the first one run), for records
        self.counter = -1               # the step counter the swap ranges read (the reference's one-step lag)
        self.sides: dict = {}           # token side -> [start, end) steps
        self.roles: list = []           # per batch item: (role, target index)
        self.structure = False          # this step takes the structure's keys/values
        self.contrast = 1.0
        self.chunk_bytes = 256 << 20
        self.explicit = False           # explicit attention everywhere (the straightforward path)
        self.record: list | None = None  # test hook: one dict per swapped layer call

    def plan(self, side: int):
        """``[(item, source item), ...]`` for a decoder self-attention layer with ``side`` x ``side`` tokens."""
        if not self.enabled or side not in self.sides:
            return None
        start, end = self.sides[side]
        if not start <= self.counter < end:
            return None
        index = {role: j for j, role in enumerate(self.roles)}
        pairs = []
        for j, (role, target) in enumerate(self.roles):
            if role != "out_swap":
                continue
            source = index.get(("struct", target)) if self.structure else index.get(("app", 0))
            if source is None:
                raise RuntimeError(f"swap at step {self.step} needs the {'structure' if self.structure else 'appearance'} "
                                   "branch in the batch")
            pairs.append((j, source))
        return pairs or None


def explicit_attention(q, k, v, *, scale: float, contrast: float = 1.0, chunk_bytes: int = 256 << 20, mask=None):
    """Softmax attention with the score matrix in float32, chunked over queries; optional contrast.

    ``q`` (B, H, Nq, D), ``k``/``v`` (B, H, Nk, D). Contrast as the reference: each row of the
    attention map is pushed away from its mean by ``contrast`` and clipped to [0, 1] (rows are
    not renormalised).
    """
    import torch

    b, h, n_q, _ = q.shape
    n_k = k.shape[2]
    rows = max(1, min(n_q, int(chunk_bytes) // max(1, b * h * n_k * 4 * 2)))
    kf = k.float().transpose(-1, -2)
    out = torch.empty((b, h, n_q, v.shape[-1]), dtype=v.dtype, device=v.device)
    for s in range(0, n_q, rows):
        scores = torch.matmul(q[:, :, s:s + rows].float(), kf) * scale
        if mask is not None:
            scores = scores + mask[..., s:s + rows, :].float()
        attn = scores.softmax(dim=-1)
        if contrast != 1.0:
            mean = attn.mean(dim=-1, keepdim=True)
            attn = ((attn - mean) * contrast + mean).clamp_(0.0, 1.0)
        out[:, :, s:s + rows] = torch.matmul(attn.to(v.dtype), v)
    return out


class CrossImageAttnProcessor:
    """Attention processor: diffusers' attention computation, plus the key/value swap where planned."""

    def __init__(self, name: str, state: SwapState, swappable: bool):
        self.name = name
        self.state = state
        self.swappable = swappable

    def _attend(self, q, k, v, mask, scale):
        import torch.nn.functional as F

        if self.state.explicit:
            return explicit_attention(q, k, v, scale=scale, chunk_bytes=self.state.chunk_bytes, mask=mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        import torch

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, n_tokens, _ = hidden_states.shape
        is_self = encoder_hidden_states is None
        if attention_mask is not None:
            seq = n_tokens if is_self else encoder_hidden_states.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if is_self:
            context = hidden_states
        else:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        key = attn.to_k(context)
        value = attn.to_v(context)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        q = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        scale = attn.scale

        plan = None
        if self.swappable and is_self and self.state.enabled:
            side = math.isqrt(n_tokens)
            if side * side == n_tokens:
                plan = self.state.plan(side)
        if plan is None:
            out = self._attend(q, k, v, attention_mask, scale)
        else:
            dst = [j for j, _ in plan]
            src = [s for _, s in plan]
            keep = [j for j in range(batch) if j not in set(dst)]
            out = torch.empty_like(q if v.shape[-1] == q.shape[-1] else v)
            if keep:
                m = None if attention_mask is None else attention_mask[keep]
                out[keep] = self._attend(q[keep], k[keep], v[keep], m, scale)
            contrast = float(self.state.contrast)
            if contrast == 1.0 and not self.state.explicit:
                swapped = self._attend(q[dst], k[src], v[src], None, scale)
            else:
                swapped = explicit_attention(q[dst], k[src], v[src], scale=scale, contrast=contrast,
                                             chunk_bytes=self.state.chunk_bytes)
            out[dst] = swapped
            if self.state.record is not None:
                self.state.record.append({"step": self.state.step, "layer": self.name, "tokens": math.isqrt(n_tokens),
                                          "source": "struct" if self.state.structure else "app", "items": len(dst)})

        hidden_states = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def swap_layer_names(unet) -> list[str]:
    """Processor names of the decoder self-attention layers (the only ones that may swap)."""
    return [name for name in unet.attn_processors if name.startswith("up_blocks.") and ".attn1." in name]


def install_processors(unet, state: SwapState) -> dict:
    """Give every attention layer of ``unet`` a :class:`CrossImageAttnProcessor`; returns the previous ones."""
    previous = dict(unet.attn_processors)
    swappable = set(swap_layer_names(unet))
    unet.set_attn_processor({name: CrossImageAttnProcessor(name, state, name in swappable) for name in previous})
    return previous


def restore_processors(unet, previous: dict) -> None:
    unet.set_attn_processor(previous)


def decoder_attention_sides(unet, latent_side: int) -> dict[int, list[str]]:
    """Token side of each decoder level with self-attention at ``latent_side`` -> its layer names."""
    n_levels = len(unet.config.block_out_channels)
    out: dict[int, list[str]] = {}
    for name in swap_layer_names(unet):
        block = int(name.split(".")[1])
        side = latent_side >> (n_levels - 1 - block)
        out.setdefault(side, []).append(name)
    return out
