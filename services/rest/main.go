// kvmesh-rest: the REST front of the mesh. grpc-gateway translates each HTTP call to the gRPC
// call its google.api.http annotation names and forwards it to the service that owns it; the
// handlers are generated from protos/ by scripts/build_rest.py. Server-streaming RPCs
// (Inference.Generate, Inference.Chat) answer newline-delimited JSON, one {"result": ...} per
// message, flushed as it arrives.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kvmesh "kvmesh/v1"
)

type registrar func(context.Context, *runtime.ServeMux, string, []grpc.DialOption) error

func main() {
	listen := flag.String("listen", "127.0.0.1:8081", "host:port to serve REST on")
	gateway := flag.String("gateway", "", "gRPC address of the gateway (Inference, Models)")
	router := flag.String("router", "", "gRPC address of the router")
	kvindex := flag.String("kvindex", "", "gRPC address of the kvindex service")
	planner := flag.String("planner", "", "gRPC address of the planner (empty: its routes answer 404)")
	openapi := flag.String("openapi", "", "OpenAPI 3 document served at /openapi.json")
	flag.Parse()

	ctx := context.Background()
	// A body grpc-gateway cannot decode comes back as a plain error, which it answers with 500,
	// for the first message of a client-streaming call (Router.Session): it is the caller's
	// bad input, like the same body sent to a unary call (400).
	runtime.HTTPError = func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter,
		r *http.Request, err error) {
		if _, ok := status.FromError(err); !ok {
			err = status.Error(codes.InvalidArgument, err.Error())
		}
		runtime.DefaultHTTPError(ctx, mux, m, w, r, err)
	}
	// Field names as in the protos (snake_case) and zero values written out: what the
	// OpenAPI document describes, and what a client reading `usage.cached_tokens` expects.
	mux := runtime.NewServeMux(runtime.WithMarshalerOption(runtime.MIMEWildcard,
		&runtime.JSONPb{OrigName: true, EmitDefaults: true}))
	// A backend that restarts (kvmesh up restarts a dead service) is found again within a
	// second, not after grpc-go's default reconnect backoff of up to two minutes.
	reconnect := backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}
	dial := []grpc.DialOption{grpc.WithInsecure(), grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnect})}
	backends := []struct {
		address    string
		registrars []registrar
	}{
		{*gateway, []registrar{kvmesh.RegisterInferenceHandlerFromEndpoint, kvmesh.RegisterModelsHandlerFromEndpoint}},
		{*router, []registrar{kvmesh.RegisterRouterHandlerFromEndpoint}},
		{*kvindex, []registrar{kvmesh.RegisterKvIndexHandlerFromEndpoint}},
		{*planner, []registrar{kvmesh.RegisterPlannerHandlerFromEndpoint}},
	}
	for _, backend := range backends {
		if backend.address == "" {
			continue
		}
		for _, register := range backend.registrars {
			if err := register(ctx, mux, backend.address, dial); err != nil {
				log.Fatalf("registering %s: %v", backend.address, err)
			}
		}
	}

	root := http.NewServeMux()
	root.Handle("/", mux)
	if *openapi != "" {
		document, err := os.ReadFile(*openapi)
		if err != nil {
			log.Fatalf("reading the OpenAPI document: %v", err)
		}
		root.HandleFunc("/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write(document)
		})
	}
	root.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	log.Printf("kvmesh-rest listening on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, root))
}
