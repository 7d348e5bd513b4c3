"""The gateway's Prometheus metrics."""

from prometheus_client import Counter, Gauge, Histogram

# The planner reads percentiles of TTFT and of sequence lengths from these, interpolating within a
# bucket: finer where TTFT targets sit (0.1-2 s), and lengths in steps of √2, not 2.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1, 1.5, 2, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
LENGTH_BUCKETS = tuple(sorted({*(2**k for k in range(4, 18)), *(3 * 2**k for k in range(3, 16))}))

REQUESTS = Counter("kvmesh_gateway_requests", "Requests by front and outcome", ["front", "status"])
# Gauges: how a scrape combines the processes of a gateway run with --procs N (procs.py).
IN_FLIGHT = Gauge("kvmesh_gateway_in_flight", "Requests being generated", multiprocess_mode="livesum")
TTFT = Histogram("kvmesh_gateway_ttft_seconds", "Time to first token", buckets=LATENCY_BUCKETS)
ITL = Histogram("kvmesh_gateway_itl_seconds", "Inter-token latency", buckets=ITL_BUCKETS)
E2E = Histogram("kvmesh_gateway_e2e_seconds", "Request latency, start to last token", buckets=LATENCY_BUCKETS)
PROMPT_TOKENS = Counter("kvmesh_gateway_prompt_tokens", "Prompt tokens")
COMPLETION_TOKENS = Counter("kvmesh_gateway_completion_tokens", "Generated tokens")
# Observed on arrival: its count is the demand, which finished requests understate under overload.
PROMPT_LENGTH = Histogram(
    "kvmesh_gateway_prompt_length_tokens", "Prompt tokens per arriving request", buckets=LENGTH_BUCKETS
)
OUTPUT_LENGTH = Histogram(
    "kvmesh_gateway_output_length_tokens", "Generated tokens per finished request", buckets=LENGTH_BUCKETS
)
CACHED_TOKENS = Counter("kvmesh_gateway_cached_tokens", "Prompt tokens served from an engine's prefix cache")
DISAGGREGATED = Counter("kvmesh_gateway_disaggregated", "Requests prefilled on a prefill worker")
PREFILL_FALLBACKS = Counter(
    "kvmesh_gateway_prefill_fallbacks", "Disaggregated requests prefilled on their decode worker instead", ["reason"]
)
DISAGG_FIRST_TOKEN_MISMATCH = Counter(
    "kvmesh_gateway_disagg_first_token_mismatch", "Decode instances whose first token differed from the prefill's"
)
MIGRATIONS = Counter("kvmesh_gateway_migrations", "Requests moved to another worker after theirs failed")
HUNG_WORKER_FAILURES = Counter(
    "kvmesh_gateway_hung_worker_failures",
    "Requests failed to move off a worker that hung: registered unresponsive, or silent for --stall-timeout-s",
    ["reason"],
)
DEADLINES_EXCEEDED = Counter(
    "kvmesh_gateway_deadlines_exceeded", "Requests failed at their deadline (the client's or --request-timeout-s)"
)
MUX_BATCHES = Counter("kvmesh_gateway_mux_batches", "Responses received on workers' muxes (each a batch of deltas)")
MUX_DELTAS = Counter("kvmesh_gateway_mux_deltas", "Request deltas received in mux batches")
# The admission queue (admission.py). Every admitted request is observed, 0 when it did not queue: the
# count is the requests admitted and the first bucket the share that never waited; refusals are not.
QUEUE_SECONDS = Histogram(
    "kvmesh_gateway_queue_seconds", "Time waited in the admission queue for a worker", ["priority"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
QUEUED = Gauge(
    "kvmesh_gateway_queued", "Requests waiting in the admission queue", ["priority"], multiprocess_mode="livesum"
)
QUEUE_REJECTIONS = Counter(
    "kvmesh_gateway_queue_rejections", "Requests the admission queue refused: full or timed out", ["priority", "reason"]
)
