"""The model to fine-tune as a Hugging Face folder, and the device and precision to train it with.

The embedded Gemma 3 270M ships as a GGUF file (selfinstruct/llm/llamacpp.py). transformers can
read GGUF, but de-quantizing it takes minutes on 2 cores (the tokenizer alone ~40 s), so we convert
it once into an HF folder in the cache dir, which then loads in seconds. The folder holds the
de-quantized weights in float32: the very weights llama.cpp runs, so an adapter trained on them
fits the GGUF base it is later applied to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from selfinstruct.config import ConfigError
from selfinstruct.training.config import check_base_model_folder

log = logging.getLogger(__name__)

EMBEDDED_HF_DIR = "gemma-3-270m-hf"  # under <cache_dir>/models/, beside the GGUF file


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock between processes (POSIX flock). Without fcntl (Windows) no lock is taken:
    the atomic rename below still keeps the folder whole, two processes just both convert."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a second process waits here, then finds the folder
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_hf_model(cache_dir: Path) -> Path:
    """The embedded Gemma 3 270M as an HF folder in cache_dir, converted from its GGUF on first use.

    Safe with several processes: one converts under a lock into a temporary folder and renames it
    into place, the others wait and reuse it; a folder that exists is always complete.
    """
    from selfinstruct.llm.llamacpp import packaged_model_path

    target = Path(cache_dir) / "models" / EMBEDDED_HF_DIR
    if target.is_dir():
        return target
    gguf_path = packaged_model_path(Path(cache_dir))
    with _exclusive_lock(target.with_name(f".{EMBEDDED_HF_DIR}.lock")):
        if target.is_dir():  # another process converted it while we waited
            return target
        for stale in target.parent.glob(f".{EMBEDDED_HF_DIR}.tmp*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.with_name(f".{EMBEDDED_HF_DIR}.tmp{os.getpid()}")
        log.info("finetune: converting the embedded model %s into an HF folder %s "
                 "(once per cache dir, a few minutes on 2 cores)", gguf_path.name, target)
        print(f"finetune: converting {gguf_path.name} into an HF folder (once; a few minutes) ...",
              flush=True)
        start = time.perf_counter()
        _convert_gguf(gguf_path, tmp)
        os.replace(tmp, target)
        seconds = time.perf_counter() - start
        log.info("finetune: converted the embedded model in %.0f s", seconds)
        print(f"finetune: converted the embedded model in {seconds:.0f} s", flush=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize a GGUF model with transformers and save it (and its tokenizer) as an HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # transformers marks a GGUF-loaded model as "quantized" and refuses to save it, but its
    # weights are already de-quantized float32 tensors: drop the marker to save them plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = EMBEDDED_HF_DIR
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def resolve_base_model(base_model: Optional[str], cache_dir: Path) -> Path:
    """finetune.base_model as an HF folder: null is the embedded model (converted on first use)."""
    if base_model is None:
        return embedded_hf_model(cache_dir)
    check_base_model_folder(base_model)
    return Path(base_model).expanduser()


def resolve_device(device: str) -> str:
    """finetune.device: auto picks cuda when torch sees a GPU, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key `finetune.device`: cuda requested, but torch sees no GPU "
                          "(torch.cuda.is_available() is False); use finetune.device=auto or cpu")
    return device


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tile instructions for bf16 (Linux /proc/cpuinfo flags)."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_precision(precision: str, device: str) -> str:
    """finetune.precision as fp32 or bf16 (autocast; weights and optimizer state stay float32).

    auto: bf16 on a GPU that supports it, and on CPUs with AMX. On this project's Xeon, which has
    AVX512-BF16 but no AMX, bf16 autocast made a LoRA step of the 270M model 1.3-1.5x slower in
    CPU time than fp32 (a bf16 matmul itself was slower, and the casts come on top), so without
    AMX auto stays fp32.
    """
    import torch

    if precision != "auto":
        if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("config key `finetune.precision`: this GPU does not support bf16; use fp32")
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_amx() and torch.backends.mkldnn.is_available() else "fp32"


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise ConfigError(f"config key `finetune.base_model`: cannot load a tokenizer from {model_dir} "
                          f"({type(e).__name__}: {e})") from e


def load_model(model_dir: Path, device: str = "cpu") -> Any:
    """An HF causal LM in float32 on device; a folder that does not load raises ConfigError."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"config key `finetune.base_model`: cannot load {model_dir} as a causal "
                          f"language model ({type(e).__name__}: {e})") from e
    return model.to(device)
