"""The models this gateway serves: their tokenizers, and their limits from the live workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kvmesh import models
from kvmesh.errors import InvalidArgument, NotFound, Unavailable
from kvmesh.registry import Watcher
from services.gateway.tokenization import ModelTokenizer


@dataclass
class ServedModel:
    name: str
    tokenizer: ModelTokenizer
    # Sampling defaults from the model's generation_config.json.
    defaults: dict[str, float]


class ServedModels:
    def __init__(self, specs: list[str], watcher: Watcher):
        self.watcher = watcher
        self.models: dict[str, ServedModel] = {}
        for spec in specs:
            name = Path(spec).name
            folder = models.resolve(spec)
            tokenizer = ModelTokenizer.load(name, str(folder))
            self.models[name] = ServedModel(name, tokenizer, models.generation_defaults(folder))

    def get(self, name: str | None) -> ServedModel:
        if not name:
            raise InvalidArgument("model: required", param="model")
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} does not exist; served: {', '.join(self.models)}", param="model")
        return model

    def max_model_len(self, name: str) -> int:
        lengths = [w.record.max_model_len for w in self.watcher.workers.values() if w.record.model == name]
        if not lengths:
            raise Unavailable(f"no live worker serves model {name!r} right now")
        return min(lengths)

    def block_size(self, name: str) -> int:
        """The KV block size of the model's live workers (the most common, if they differ; 0 if
        none): the gateway hashes prompts with it, and KV overlap counts only on workers using it."""
        sizes = [w.record.kv_block_size for w in self.watcher.workers.values() if w.record.model == name]
        return max(set(sizes), key=sizes.count) if sizes else 0

    def live(self) -> dict[str, list]:
        """Served model name → the live workers' records."""
        out: dict[str, list] = {name: [] for name in self.models}
        for w in self.watcher.workers.values():
            if w.record.model in out:
                out[w.record.model].append(w.record)
        return out
