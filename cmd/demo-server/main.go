// Command demo-server is the server half of `make demo`: an HTTPS server
// whose certificate comes from the SPIFFE Workload API (go-spiffe), which
// accepts only the demo client's SPIFFE ID and answers with what it saw.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/demo"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8444", "address to serve HTTPS on")
	err := demo.Run("server", "client", func(ctx context.Context, ids demo.IDs, src *workloadapi.X509Source) error {
		return serve(ctx, *addr, ids, src)
	})
	if err != nil {
		log.Fatalf("demo-server: %v", err)
	}
}

func serve(ctx context.Context, addr string, ids demo.IDs, src *workloadapi.X509Source) error {
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
