package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/mayfly-pki/mayfly/internal/test/loopback"
)

func TestHealthMux(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "mayfly_test_total", Help: "a test counter"})
	reg.MustRegister(c)
	var notReady atomic.Pointer[error]
	refusal := errors.New("no signing authority yet")
	notReady.Store(&refusal)
	mux := HealthMux(reg, func() error {
		if err := notReady.Load(); err != nil {
			return *err
		}
		return nil
	})
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q, want 200 ok", code, body)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, refusal.Error()) {
		t.Errorf("/readyz while not ready = %d %q, want 503 naming %q", code, body, refusal)
	}
	notReady.Store(nil)
	if code, body := get("/readyz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/readyz when ready = %d %q, want 200 ok", code, body)
	}
	if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "mayfly_test_total") {
		t.Errorf("/metrics = %d, want 200 with the registry's metrics:\n%s", code, body)
	}
}

// TestServeHTTP serves until the context is done, over TLS when the server
// has a TLSConfig, and names the setting when the address is taken.
func TestServeHTTP(t *testing.T) {
	hello := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("hello")) })
	tlsServer := httptest.NewUnstartedServer(hello) // only for its certificate and client
	tlsServer.StartTLS()
	tlsServer.Close()
	for _, tc := range []struct {
		name   string
		tls    *tls.Config
		client *http.Client
		scheme string
	}{
		{name: "plain", client: http.DefaultClient, scheme: "http"},
		{name: "tls", tls: tlsServer.TLS, client: tlsServer.Client(), scheme: "https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var g errgroup.Group
			listening := make(chan struct{})
			hs := &http.Server{Addr: loopback.FreeAddr(t), Handler: hello, TLSConfig: tc.tls, ReadHeaderTimeout: time.Second}
			ServeHTTP(ctx, &g, hs, "testAddress", 5*time.Second, func() { close(listening) })
			<-listening
			resp, err := tc.client.Get(tc.scheme + "://" + hs.Addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if string(body) != "hello" {
				t.Errorf("body = %q, want hello", body)
			}
			cancel()
			if err := g.Wait(); err != nil {
				t.Errorf("after the context is done: %v, want nil", err)
			}
			if _, err := net.Dial("tcp", hs.Addr); err == nil {
				t.Error("still listening after the context is done")
			}
		})
	}
	t.Run("address_taken", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		g, gctx := errgroup.WithContext(ctx)
		ServeHTTP(gctx, g, &http.Server{Addr: taken.Addr().String(), ReadHeaderTimeout: time.Second}, "testAddress", time.Second, func() {
			t.Error("listening called on an address in use")
		})
		if err := g.Wait(); err == nil || !strings.HasPrefix(err.Error(), "testAddress: ") {
			t.Errorf("error = %v, want one naming testAddress", err)
		}
	})
}
