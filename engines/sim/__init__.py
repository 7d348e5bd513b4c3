"""A simulated vLLM worker for scale tests: real scheduling, paged KV with prefix caching and
KV events, timed by a small formula instead of a model."""
