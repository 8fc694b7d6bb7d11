"""A PEFT LoRA adapter as a GGUF LoRA file that llama.cpp applies to its base model at load time:
`Llama(model_path=base.gguf, lora_path=adapter.gguf)`.

The layout llama.cpp's loader (src/llama-adapter.cpp) expects, which this writes:
- metadata: general.type = "adapter", general.architecture = the base model's architecture (must
  match the base GGUF), adapter.type = "lora", adapter.lora.alpha (float32);
- for every adapted weight W of the base model, two tensors named after W's GGUF name with the
  suffixes .lora_a and .lora_b (e.g. blk.3.attn_q.weight.lora_a);
- shapes: with W of (out, in) in numpy order, lora_a is (r, in) and lora_b is (out, r): exactly
  PEFT's lora_A.weight and lora_B.weight, no transpose;
- llama.cpp adds scale * alpha / r * (B @ A) x, r read from lora_b; PEFT adds (alpha / r) (B A) x,
  so the same alpha gives the same update (rank-stabilised LoRA is converted to the equivalent
  alpha).

Only architectures whose HF and GGUF weight layouts agree are written: llama.cpp's converter
permutes the rows of the query and key weights of Llama-family models for its rotary
implementation, which an adapter would have to follow; Gemma models are stored unpermuted.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

# HF model_type -> GGUF architecture name, for the families stored without a weight permutation.
GGUF_ARCH = {"gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3", "gemma3_text": "gemma3"}


class UnsupportedArchitecture(ValueError):
    """No GGUF adapter can be written for this base model's architecture."""


def gguf_arch_for(model_type: str) -> str:
    if model_type not in GGUF_ARCH:
        raise UnsupportedArchitecture(
            f"no GGUF LoRA layout known for model_type {model_type!r} (known: {sorted(GGUF_ARCH)}); "
            "the PEFT adapter is still written")
    return GGUF_ARCH[model_type]


def _hf_weight_name(peft_key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' ->
    ('model.layers.0.self_attn.q_proj.weight', 'a')."""
    name = peft_key.removeprefix("base_model.model.")
    for marker, which in ((".lora_A.weight", "a"), (".lora_B.weight", "b")):
        if name.endswith(marker):
            return name[: -len(marker)] + ".weight", which
    raise ValueError(f"unexpected tensor {peft_key!r} in a LoRA adapter (only lora_A/lora_B are "
                     "supported: no bias, embedding or modules_to_save tensors)")


def write_gguf_adapter(adapter_dir: Path, out_path: Path, model_type: str, num_layers: int) -> Path:
    """Write the PEFT adapter in adapter_dir (adapter_config.json, adapter_model.safetensors) as a
    GGUF LoRA file at out_path (atomically); model_type and num_layers come from the base config."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    arch = gguf_arch_for(model_type)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("per-module LoRA ranks or alphas (rank_pattern/alpha_pattern) have no "
                         "GGUF equivalent: llama.cpp reads one alpha per adapter")
    r = int(config["r"])
    scaling = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    alpha = scaling * r  # llama.cpp scales by alpha / r

    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(arch_enum, num_layers)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))

    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch)  # also writes general.architecture
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for key in sorted(tensors):
        hf_name, which = _hf_weight_name(key)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name!r} in architecture {arch}")
        writer.add_tensor(f"{gguf_name}.lora_{which}", np.ascontiguousarray(tensors[key], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out_path)
    return out_path
