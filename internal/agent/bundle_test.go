package agent

import (
	"crypto/x509"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// savedBundles is a BundleSaver that records what it is given.
type savedBundles struct {
	mu    sync.Mutex
	saved [][]*x509.Certificate
	err   error
}

func (s *savedBundles) SaveBundle(roots []*x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.saved = append(s.saved, roots)
	return s.err
}

func bundleMsg(version string, roots ...*x509.Certificate) *issuerv1.Bundle {
	b := &issuerv1.Bundle{Version: version}
	for _, r := range roots {
		b.X509Authorities = append(b.X509Authorities, r.Raw)
	}
	return b
}

func TestBundleWatcherInstall(t *testing.T) {
	if _, err := NewBundleWatcher(BundleWatcherConfig{}); err == nil || !strings.Contains(err.Error(), "no initial trust bundle") {
		t.Fatalf("NewBundleWatcher without a bundle = %v, want an error saying so", err)
	}
	first, next := testca.New(t), testca.New(t)
	saver := &savedBundles{}
	logs := &logbuf.Buffer{}
	w, err := NewBundleWatcher(BundleWatcherConfig{Initial: first.Bundle(), Saver: saver, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if roots, version := w.Bundle(); len(roots) != 1 || !roots[0].Equal(first.Root) || version != "" {
		t.Fatalf("initial bundle %d roots version %q, want the initial root without a version", len(roots), version)
	}
	changes, unsubscribe := w.SubscribeBundle()
	defer unsubscribe()
	quiet := func(what string) {
		t.Helper()
		select {
		case <-changes:
			t.Errorf("%s signalled a change", what)
		default:
		}
	}

	if !w.Install(bundleMsg("v2", first.Root, next.Root)) {
		t.Fatal("Install(v2) = false, want it acknowledged")
	}
	recv(t, changes, "a signal after v2")
	if roots, version := w.Bundle(); len(roots) != 2 || version != "v2" || !roots[1].Equal(next.Root) {
		t.Fatalf("bundle %q with %d roots, want v2 with both", version, len(roots))
	}
	if len(saver.saved) != 1 || len(saver.saved[0]) != 2 {
		t.Errorf("saved %d bundles, want v2 once", len(saver.saved))
	}

	// The same version again (the stream reopened): acknowledged, no change.
	if !w.Install(bundleMsg("v2", first.Root, next.Root)) {
		t.Error("Install(v2) again = false, want it acknowledged again")
	}
	quiet("the same version")

	// Unusable bundles are not acknowledged and leave v2 in force.
	for _, bad := range []*issuerv1.Bundle{nil, {Version: "v3"}, {Version: "v3", X509Authorities: [][]byte{[]byte("not DER")}}} {
		if w.Install(bad) {
			t.Errorf("Install(%v) = true, want an unusable bundle refused", bad)
		}
	}
	quiet("an unusable bundle")
	if _, version := w.Bundle(); version != "v2" {
		t.Errorf("bundle version %q after unusable ones, want v2 kept", version)
	}
	if !strings.Contains(logs.String(), "ignoring an unusable bundle from the CA") {
		t.Errorf("logs %q do not report the unusable bundle", logs)
	}

	// A bundle that cannot be saved is in force all the same.
	saver.err = errors.New("disk full")
	if !w.Install(bundleMsg("v3", next.Root)) {
		t.Fatal("Install(v3) = false")
	}
	recv(t, changes, "a signal after v3")
	if _, version := w.Bundle(); version != "v3" {
		t.Errorf("bundle version %q, want v3", version)
	}
	if !strings.Contains(logs.String(), "cannot persist the trust bundle") {
		t.Errorf("logs %q do not report the failed save", logs)
	}
}

func TestJitterSpreadsReconnects(t *testing.T) {
	const d = 4 * time.Second
	seen := map[time.Duration]bool{}
	for range 1000 {
		w := jitter(d)
		if w < d/2 || w >= 3*d/2 {
			t.Fatalf("jitter(%s) = %s, want within [%s, %s)", d, w, d/2, 3*d/2)
		}
		seen[w/(100*time.Millisecond)] = true
	}
	// 1,000 agents dropped at once must not dial again together: their
	// waits fall in many of the 40 buckets of 100 ms.
	if len(seen) < 30 {
		t.Errorf("1000 waits fell in %d buckets of 100 ms, want them spread over the 4 s", len(seen))
	}
	if got := jitter(0); got != 0 {
		t.Errorf("jitter(0) = %s", got)
	}
}
