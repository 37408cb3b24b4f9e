// Command demo-server is the server half of `make demo`: an HTTPS server
// whose certificate comes from the SPIFFE Workload API (go-spiffe), which
// accepts only the demo client's SPIFFE ID and answers with what it saw.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/demo"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8444", "address to serve HTTPS on")
	parseIDs := demo.IDFlags("server", "client")
	flag.Parse()
	ids, err := parseIDs()
	if err == nil {
		err = run(*addr, ids)
	}
	if err != nil {
		log.Fatalf("demo-server: %v", err)
	}
}

func run(addr string, ids demo.IDs) error {
	ctx, stop := cli.SignalContext()
	defer stop()
	src, err := demo.NewSource(ctx, ids.Self)
	if err != nil {
		return err
	}
	defer src.Close()
	srv := &http.Server{
		Addr:              addr,
		TLSConfig:         tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeID(ids.Peer)),
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c := r.TLS.PeerCertificates[0]
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintf(w, "hello %s (serial %s)\n", c.URIs[0], c.SerialNumber.Text(16)) //nolint:gosec // text/plain echo of the verified peer certificate's ID, not HTML
		}),
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Printf("demo-server: serving mTLS on %s as %s, accepting %s", addr, ids.Self, ids.Peer)
	if err := srv.ListenAndServeTLS("", ""); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}
