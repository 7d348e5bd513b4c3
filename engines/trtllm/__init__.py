"""TensorRT-LLM behind kvmesh's engine-model interface (LLM API, PyTorch backend). GPU only: the
mapping at the engine boundary (mapping.py) is unit-tested here; engine.py runs only on a GPU."""
