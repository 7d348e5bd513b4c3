from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kvmesh.settings import WatcherSettings


class KvIndexSettings(WatcherSettings):
    model_config = SettingsConfigDict(env_prefix="KVMESH_KVINDEX_", cli_prog_name="kvmesh kvindex")

    port: int = Field(8091, ge=0, le=65535, description="gRPC port; 0 = a free port")
    max_match_blocks: int = Field(4096, ge=1, description="longest request Match accepts, in blocks")
    # Bounds on the workers' KV-event streams: what lies outside is counted and dropped.
    max_block_size: int = Field(16384, ge=1, description="largest block size a BlockStored event may carry")
    max_batch_blocks: int = Field(
        65536, ge=1,
        description="most blocks one KV-event batch may name; a bigger batch is dropped, and the worker's blocks",
    )  # fmt: skip
    max_message_mb: int = Field(
        64, ge=1, description="largest KV-event message; ZMQ disconnects a publisher that sends a bigger one"
    )
    max_seq_gap: int = Field(
        100_000, ge=1,
        description="largest KV-event sequence gap replayed, and the longest replay read; keep it above "
        "the engines' replay buffer",
    )  # fmt: skip
    max_worker_blocks: int = Field(4_194_304, ge=1, description="most blocks indexed for one worker")
