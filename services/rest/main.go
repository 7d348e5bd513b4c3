// kvmesh-rest: the REST front of the mesh. grpc-gateway translates each HTTP call to the gRPC
// call its google.api.http annotation names and forwards it to the service that owns it; the
// handlers are generated from protos/ by scripts/build_rest.py. Server-streaming RPCs
// (Inference.Generate, Inference.Chat) answer newline-delimited JSON, one {"result": ...} per
// message, flushed as it arrives. With -tls-cert, -tls-key and -tls-ca it dials the services with
// mutual TLS (its certificate, theirs checked against the CA); its own HTTP listener stays plain.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
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
	tlsCert := flag.String("tls-cert", "", "PEM certificate shown to the services (mutual TLS; with -tls-key, -tls-ca)")
	tlsKey := flag.String("tls-key", "", "the private key of -tls-cert (PEM)")
	tlsCA := flag.String("tls-ca", "", "PEM CA the services' certificates must be signed by")
	flag.Parse()
	transport, err := transportCredentials(*tlsCert, *tlsKey, *tlsCA)
	if err != nil {
		log.Fatalf("tls: %v", err)
	}

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
	dial := []grpc.DialOption{transport, grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnect})}
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

// transportCredentials: plain text without the three files, mutual TLS with all three.
func transportCredentials(cert, key, ca string) (grpc.DialOption, error) {
	if cert == "" && key == "" && ca == "" {
		return grpc.WithInsecure(), nil
	}
	if cert == "" || key == "" || ca == "" {
		return nil, fmt.Errorf("mutual TLS needs -tls-cert, -tls-key and -tls-ca together")
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", ca)
	}
	config := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	return grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
}
