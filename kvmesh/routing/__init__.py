"""The routing decision as a library: filters → scorers → picker over the live workers with their
KV overlap and shared load (one Redis read), and the in-flight accounting it routes by. The router
service serves it over gRPC; a gateway also runs it in its own process while it has few requests
in flight (services/gateway/routing.py), as Dynamo's frontend embeds its KV router."""
