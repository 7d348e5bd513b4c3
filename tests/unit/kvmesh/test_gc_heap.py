import gc

from kvmesh import grpc_server


async def test_a_service_that_is_up_has_its_start_up_heap_frozen():
    gc.unfreeze()
    built_at_start_up = [{"n": i} for i in range(10_000)]
    served = await grpc_server.serve("test", "127.0.0.1", 0, lambda server: None)
    try:
        assert gc.get_freeze_count() >= len(built_at_start_up)
        walked = {id(o) for o in gc.get_objects()}  # what a collection walks; frozen objects are not
        assert not any(id(o) in walked for o in built_at_start_up)
    finally:
        await served.server.stop(None)
        gc.unfreeze()
