"""Choosing the torch device and mixed precision, with plain messages when a GPU is missing."""

from __future__ import annotations

from .errors import HistogenInputError

__all__ = ["DEVICES", "PRECISIONS", "resolve_device", "autocast_dtype", "cpu_bf16_supported", "describe_device"]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto"):
    """``"auto"`` -> CUDA when torch sees a GPU, else CPU; ``"cuda"``/``"cuda:N"`` checked.

    Raises
    ------
    HistogenInputError
        CUDA asked for on a machine (or torch build) without a usable GPU.
    """
    import torch

    text = str(name or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise HistogenInputError(
                f"CUDA was asked for, but torch ({torch.__version__}, {build}) sees no GPU on this machine. "
                "Choose device 'cpu' or 'auto' (slower), or run on a machine with an NVIDIA GPU and a CUDA build of torch.")
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HistogenInputError(f"{text} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
        return device
    raise HistogenInputError(f"Unknown device '{name}'; choose one of {', '.join(DEVICES)} (or cuda:N).")


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN with AVX-512 BF16 or AMX).

    Without such support bf16 on CPU is emulated and slower than fp32.
    """
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the oneDNN query
        return False


def autocast_dtype(device, precision: str = "auto", *, allow_cpu_bf16: bool = False):
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    ``auto`` is bf16 on GPUs that support it, else fp16 on CUDA, and fp32 on CPU. With
    ``allow_cpu_bf16`` (callers whose bf16 inference on CPU was measured faster at the same
    quality: NASDM sampling, docs/performance.md) ``bf16`` runs on a CPU with native bf16
    (:func:`cpu_bf16_supported`), and ``auto`` picks it there.
    """
    import torch

    precision = str(precision or "auto").lower()
    if precision not in PRECISIONS:
        raise HistogenInputError(f"Unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "auto":
            return torch.bfloat16 if allow_cpu_bf16 and cpu_bf16_supported() else None
        if precision == "bf16" and allow_cpu_bf16:
            if not cpu_bf16_supported():
                raise HistogenInputError("This CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 is slower "
                                         "than fp32; use precision fp32 (or auto).")
            return torch.bfloat16
        only = "fp32 (or auto)" + (" or bf16" if allow_cpu_bf16 else "")
        raise HistogenInputError(f"Precision {precision} needs a CUDA device; on CPU use {only}.")
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def describe_device(device) -> str:
    """A human-readable device name for provenance (``"cpu"``, ``"cuda:0 (NVIDIA H100 ...)"``)."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"
