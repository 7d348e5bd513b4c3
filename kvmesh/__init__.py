"""kvmesh core: what every service shares (generated stubs, settings, errors, gRPC serving,
telemetry, the worker registry, the model catalog). Nothing service-specific lives here."""
