package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
)

// HealthMux serves a process's health endpoints: /metrics from reg,
// /healthz (always ok) and /readyz (503 with ready's error while ready
// returns one).
func HealthMux(reg *prometheus.Registry, ready func() error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// ServeHTTP serves hs on hs.Addr in g (over TLS when hs.TLSConfig is set)
// until ctx is done, then shuts it down, letting requests in flight finish
// within grace. listening, if not nil, is called once the address is
// bound; errors name setting, the configuration field of the address.
func ServeHTTP(ctx context.Context, g *errgroup.Group, hs *http.Server, setting string, grace time.Duration, listening func()) {
	g.Go(func() error {
		lis, err := net.Listen("tcp", hs.Addr)
		if err != nil {
			return fmt.Errorf("%s: %w", setting, err)
		}
		if listening != nil {
			listening()
		}
		if hs.TLSConfig != nil {
			err = hs.ServeTLS(lis, "", "")
		} else {
			err = hs.Serve(lis)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s: %w", setting, err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		return hs.Shutdown(sctx) //nolint:contextcheck // the run context is already done
	})
}
