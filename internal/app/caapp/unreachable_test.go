package caapp_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
)

// TestKubernetesAPIServerUnreachableAtStart: with no API server there is
// no pod cache and no CA state, so the CA must not serve at all. It exits
// at once with an error naming the API server (Kubernetes restarts it with
// backoff); nothing was issued. (Mid-run outages: internal/kubenodes's
// TestAPIServerDown — known pods keep being served from the cache, new
// attestations fail closed.)
func TestKubernetesAPIServerUnreachableAtStart(t *testing.T) {
	cfg, err := caapp.Parse([]byte(kubeConfig))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	served := false
	err = caapp.Run(ctx, cfg, caapp.Options{
		Listener: lis, RestConfig: &rest.Config{Host: "https://127.0.0.1:1"},
		Logger: slog.New(slog.DiscardHandler), Ready: func(string) { served = true },
	})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("Run = %v, want an error naming the unreachable API server", err)
	}
	if served {
		t.Fatal("the issuer API served without an API server")
	}
}
