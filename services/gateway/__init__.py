"""The gateway: the front door (gRPC Inference/Models, OpenAI-compatible HTTP); tokenizes, asks the
router where to run, streams from Triton, detokenizes."""
