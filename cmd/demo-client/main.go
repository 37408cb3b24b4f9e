// Command demo-client is the client half of `make demo`: every interval it
// opens a new mTLS connection to the demo server with an SVID from the
// Workload API and prints the handshake: the peer's SPIFFE ID, serial and
// seconds left, and its own. It also prints each time its trust bundle or
// the root above its own or the server's leaf changes (with a t=<unix
// seconds> stamp for the demo's timings). First it fetches a JWT-SVID and
// has it validated (jwt.go). It exits non-zero if any handshake failed.
package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/demo"
)

func main() {
	server := flag.String("server", "127.0.0.1:8444", "demo server address")
	every := flag.Duration("interval", time.Second, "time between requests")
	var ok, failed int
	err := demo.Run("client", "server", func(ctx context.Context, ids demo.IDs, src *workloadapi.X509Source) (err error) {
		ok, failed, err = run(ctx, *server, ids, src, *every)
		return err
	})
	demo.Finish("demo-client", ok, failed, err)
}

func run(ctx context.Context, server string, ids demo.IDs, src *workloadapi.X509Source, every time.Duration) (ok, failed int, err error) {
	if err := jwtDemo(ctx, ids); err != nil {
		return 0, 0, fmt.Errorf("JWT-SVID: %w", err)
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	changes := demo.Changes{}
	for {
		tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(ids.Peer)), DisableKeepAlives: true}
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := client.Get("https://" + server + "/")
		now := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return ok, failed, nil
			}
			failed++
			fmt.Printf("%s handshake FAILED: %v\n", now.Format("15:04:05"), err)
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			ok++
			mine, _ := src.GetX509SVID()
			fmt.Printf("%s handshake ok  peer %s serial %s left %s | me serial %s left %s\n",
				now.Format("15:04:05"), idOf(resp.TLS.PeerCertificates[0]), short(resp.TLS.PeerCertificates[0]), left(resp.TLS.PeerCertificates[0], now),
				short(mine.Certificates[0]), left(mine.Certificates[0], now))
			if b, err := src.GetX509BundleForTrustDomain(ids.Self.TrustDomain()); err == nil {
				roots := b.X509Authorities()
				changes.Print(now, "socket/client", "trust bundle now holds", fmt.Sprintf("%d roots: %s", len(roots), demo.Fingerprints(roots)))
				changes.Print(now, "socket/client", "leaf now under root", demo.RootOf(mine.Certificates, roots))
				changes.Print(now, "socket/server", "leaf now under root", demo.RootOf(resp.TLS.PeerCertificates, roots))
			}
		}
		tr.CloseIdleConnections()
		select {
		case <-ctx.Done():
			return ok, failed, nil
		case <-tick.C:
		}
	}
}

func idOf(c *x509.Certificate) string {
	if len(c.URIs) == 0 {
		return "?"
	}
	return c.URIs[0].String()
}

func short(c *x509.Certificate) string {
	s := c.SerialNumber.Text(16)
	if len(s) > 8 {
		s = s[:8]
	}
	return s
}

func left(c *x509.Certificate, now time.Time) string {
	return fmt.Sprintf("%3.0fs", c.NotAfter.Sub(now).Seconds())
}
