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
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8444", "address to serve HTTPS on")
	self := flag.String("id", "spiffe://example.org/demo/server", "this server's SPIFFE ID")
	peer := flag.String("client-id", "spiffe://example.org/demo/client", "the only client SPIFFE ID accepted")
	flag.Parse()
	if err := run(*addr, *self, *peer); err != nil {
		log.Fatalf("demo-server: %v", err)
	}
}

func run(addr, self, peer string) error {
	selfID, err := spiffeid.FromString(self)
	if err != nil {
		return fmt.Errorf("--id: %w", err)
	}
	clientID, err := spiffeid.FromString(peer)
	if err != nil {
		return fmt.Errorf("--client-id: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// SPIFFE_ENDPOINT_SOCKET names the agent's socket.
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithDefaultX509SVIDPicker(picker(selfID)))
	if err != nil {
		return fmt.Errorf("workload API: %w", err)
	}
	defer src.Close()
	srv := &http.Server{
		Addr:              addr,
		TLSConfig:         tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeID(clientID)),
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
	log.Printf("demo-server: serving mTLS on %s as %s, accepting %s", addr, selfID, clientID)
	if err := srv.ListenAndServeTLS("", ""); err != nil && err != http.ErrServerClosed {
		return err
	}
	return nil
}

func picker(id spiffeid.ID) func([]*x509svid.SVID) *x509svid.SVID {
	return func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, s := range svids {
			if s.ID == id {
				return s
			}
		}
		return svids[0]
	}
}
