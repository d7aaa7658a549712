"""GPU speed options for loaded pipelines: torch.compile, channels_last, SDPA attention, TF32.

Each option is a small function applied by `PipelineCache` once per load, so the rest of the
worker never sees which ones are on. None of them changes what is computed, only how: images
stay within rounding of the plain pipeline (the tests measure it on the CPU).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnAddedKVProcessor,
    AttnAddedKVProcessor2_0,
    AttnProcessor,
    AttnProcessor2_0,
)

log = logging.getLogger(__name__)

CompileTarget = Literal["none", "unet", "all"]

# Eager attention processors and their torch SDPA (scaled_dot_product_attention) equivalents.
_SDPA_FOR: dict[type, type] = {
    AttnProcessor: AttnProcessor2_0,
    AttnAddedKVProcessor: AttnAddedKVProcessor2_0,
}
SDPA_PROCESSORS = frozenset(cls.__name__ for cls in _SDPA_FOR.values())

# torch.compile keeps this many compiled versions of one function (one per input shape) before it
# falls back to eager; torch's default of 8 is used up by 4 buckets x 2 decoder UNets alone.
RECOMPILE_LIMIT = 64


def batch_buckets(max_batch_size: int) -> list[int]:
    """The micro-batch sizes a compiled decoder is warmed for: powers of two, then the cap."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def bucket_for(n: int, max_batch_size: int) -> int:
    """The smallest bucket holding `n` images (`n` itself past the cap, which the engine never sends)."""
    return next((size for size in batch_buckets(max_batch_size) if size >= n), n)


def compile_pipeline(pipe: Any, target: CompileTarget, backend: str = "inductor") -> list[str]:
    """Compile the decoder's UNet (`unet`), and its MoVQ decode too (`all`), in place; the names compiled.

    `dynamic=False`: every new input shape compiles a graph specialised to it, which is the
    fastest code for that shape; micro-batches are padded to a few buckets (see `batch_buckets`)
    so the shapes, hence the compiles, stay few and are all done by the warm-up. Dynamic shapes
    would compile once but run slower kernels and still recompile on some sizes. The UNet runs on
    2N latents per call with classifier-free guidance (guidance_scale > 1), N without.

    In place (`Module.compile`, an instance attribute for `decode`): the pipeline keeps its own
    modules, so img2img's `from_pipe` shares the compiled ones and no weight is copied.
    """
    if target == "none":
        return []
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    pipe.unet.compile(dynamic=False, backend=backend)
    compiled = ["unet"]
    if target == "all":
        # KandinskyPipeline calls `self.movq.decode(latents, force_not_quantize=True)`; compiling
        # that method (not the module's forward, which encodes too) covers post_quant_conv and decoder.
        pipe.movq.decode = torch.compile(pipe.movq.decode, dynamic=False, backend=backend)
        compiled.append("movq.decode")
    return compiled


def resolve_channels_last(name: str, device: torch.device) -> bool:
    """`auto` means on for CUDA (NHWC convolutions use tensor cores), off elsewhere."""
    if name == "auto":
        return device.type == "cuda"
    return name == "true"


def use_channels_last(pipe: Any) -> list[str]:
    """Store the UNet's and MoVQ's 4-D weights as channels_last (NHWC); the names changed."""
    changed = []
    for name in ("unet", "movq"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            # Module.to takes memory_format at run time; torch's type stubs leave it out.
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            changed.append(name)
    return changed


def ensure_sdpa(module: torch.nn.Module) -> int:
    """Switch every eager attention processor in `module` to its SDPA one; how many were switched.

    diffusers picks the SDPA processors itself on torch 2, but a checkpoint or a library version
    can leave the eager ones (which materialise the full attention matrix): this makes sure.
    Processors we do not know (a LoRA's, say) are left as they are, and reported by
    `processor_names`.
    """
    switched = 0
    for sub in module.modules():
        if isinstance(sub, Attention):
            sdpa = _SDPA_FOR.get(type(sub.processor))
            if sdpa is not None:
                sub.set_processor(sdpa())
                switched += 1
    return switched


def processor_names(module: torch.nn.Module) -> list[str]:
    """The class names of the attention processors in `module`, sorted, each once."""
    return sorted({type(sub.processor).__name__ for sub in module.modules() if isinstance(sub, Attention)})


def tf32_decision(wanted: bool, device: torch.device, capability: tuple[int, int] | None) -> bool | None:
    """What to set torch's TF32 flags to: `wanted` on CUDA Ampere (8.0) and later, else None (leave them).

    TF32 runs float32 matmuls and convolutions on tensor cores with a 10-bit mantissa, which
    diffusion sampling tolerates; GPUs before Ampere have no TF32, and the flags mean nothing on
    other devices, so they are left as torch set them.
    """
    if device.type != "cuda" or capability is None or capability < (8, 0):
        return None
    return wanted


def apply_tf32(wanted: bool, device: torch.device) -> bool | None:
    """Set the matmul and cuDNN TF32 flags as `tf32_decision` says; what was set, or None."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    decision = tf32_decision(wanted, device, capability)
    if decision is not None:
        torch.backends.cuda.matmul.allow_tf32 = decision
        torch.backends.cudnn.allow_tf32 = decision
        log.info(
            "TF32 matmuls and convolutions %s (compute capability %s)",
            "on" if decision else "off",
            capability,
        )
    return decision
