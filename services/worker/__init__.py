"""The worker: one Triton server running an engine model, registered in Redis with a lease."""
