// kvmesh-rest: the REST front of the mesh. grpc-gateway translates each HTTP call to the gRPC
// call its google.api.http annotation names and forwards it to the service that owns it; the
// handlers are generated from protos/ by scripts/build_rest.py. Server-streaming RPCs
// (Inference.Generate, Inference.Chat) answer newline-delimited JSON, one {"result": ...} per
// message, flushed as it arrives. With -tls-cert and -tls-key its own listener serves HTTPS (the
// certificate re-read for new connections when its files change or on SIGHUP); with -tls-ca as
// well it dials the services with mutual TLS (its certificate, theirs checked against the CA).
// The router's, kvindex's and planner's RPCs are the mesh's own and an admin's: their routes exist
// only with -expose-internal. The Authorization header reaches the services as the gRPC
// `authorization` metadata (grpc-gateway's runtime.AnnotateContext passes it through).
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
	"os/signal"
	"sync"
	"syscall"
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
	tlsCert := flag.String("tls-cert", "", "PEM certificate: HTTPS on -listen (with -tls-key); with -tls-ca also "+
		"shown to the services (mutual TLS)")
	tlsKey := flag.String("tls-key", "", "the private key of -tls-cert (PEM)")
	tlsCA := flag.String("tls-ca", "", "PEM CA the services' certificates must be signed by (mutual TLS to them)")
	exposeInternal := flag.Bool("expose-internal", false, "serve the router's, kvindex's and planner's routes "+
		"(mesh-internal and admin RPCs); without it they answer 404")
	flag.Parse()
	if (*tlsCert == "") != (*tlsKey == "") || (*tlsCA != "" && *tlsCert == "") {
		log.Fatalf("tls: -tls-cert and -tls-key come together, and -tls-ca needs them")
	}
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
		internal   bool
		registrars []registrar
	}{
		{*gateway, false, []registrar{kvmesh.RegisterInferenceHandlerFromEndpoint, kvmesh.RegisterKeysHandlerFromEndpoint,
			kvmesh.RegisterModelsHandlerFromEndpoint}},
		{*router, true, []registrar{kvmesh.RegisterRouterHandlerFromEndpoint}},
		{*kvindex, true, []registrar{kvmesh.RegisterKvIndexHandlerFromEndpoint}},
		{*planner, true, []registrar{kvmesh.RegisterPlannerHandlerFromEndpoint}},
	}
	for _, backend := range backends {
		if backend.address == "" || (backend.internal && !*exposeInternal) {
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
	if *tlsCert == "" {
		log.Printf("kvmesh-rest listening on %s", *listen)
		log.Fatal(http.ListenAndServe(*listen, root))
	}
	certificate, err := newReloadingCertificate(*tlsCert, *tlsKey)
	if err != nil {
		log.Fatalf("tls: %v", err)
	}
	server := &http.Server{Addr: *listen, Handler: root,
		TLSConfig: &tls.Config{GetCertificate: certificate.get, MinVersion: tls.VersionTLS12}}
	log.Printf("kvmesh-rest listening on %s (HTTPS)", *listen)
	log.Fatal(server.ListenAndServeTLS("", ""))
}

// reloadingCertificate: the listener's certificate, re-read at a new connection when the files'
// size or modification time changed, or after SIGHUP. A pair that does not load is logged and the
// previous one kept (a renewal half written: the new certificate beside the old key).
type reloadingCertificate struct {
	certFile, keyFile string
	mu                sync.Mutex
	current           *tls.Certificate
	stamp             string // the files' size and mtime when current was read
	failed            string // the stamp of a pair that did not load, logged once
	sighup            chan os.Signal
}

func newReloadingCertificate(certFile, keyFile string) (*reloadingCertificate, error) {
	r := &reloadingCertificate{certFile: certFile, keyFile: keyFile, sighup: make(chan os.Signal, 1)}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	r.current, r.stamp = &pair, r.filesStamp()
	signal.Notify(r.sighup, syscall.SIGHUP)
	return r, nil
}

func (r *reloadingCertificate) filesStamp() string {
	stamp := ""
	for _, name := range []string{r.certFile, r.keyFile} {
		if info, err := os.Stat(name); err == nil {
			stamp += fmt.Sprintf("%d/%d;", info.Size(), info.ModTime().UnixNano())
		}
	}
	return stamp
}

func (r *reloadingCertificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	forced := false
	select {
	case <-r.sighup:
		forced = true
	default:
	}
	stamp := r.filesStamp()
	if !forced && stamp == r.stamp {
		return r.current, nil
	}
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		if stamp != r.failed {
			log.Printf("tls: keeping the current certificate: %v", err)
			r.failed = stamp
		}
		return r.current, nil
	}
	log.Printf("tls: %s reloaded for new connections", r.certFile)
	r.current, r.stamp, r.failed = &pair, stamp, ""
	return r.current, nil
}

// transportCredentials: plain text towards the services without -tls-ca, mutual TLS with it.
func transportCredentials(cert, key, ca string) (grpc.DialOption, error) {
	if ca == "" {
		return grpc.WithInsecure(), nil
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
