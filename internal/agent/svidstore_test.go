package agent

import (
	"crypto"
	"crypto/x509"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

func newStore(t *testing.T, dir string) (*SVIDStore, *logbuf.Buffer) {
	t.Helper()
	logs := &logbuf.Buffer{}
	return NewSVIDStore(dir, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))), logs
}

func TestSVIDStorePutAndLoad(t *testing.T) {
	clk := rotate.NewFakeClock(epoch)
	tca := testca.New(t, testca.WithClock(clk.Now))
	chain, key := tca.IssueWorkload(t, spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a"), time.Hour)
	dir := filepath.Join(t.TempDir(), "agent")

	s, logs := newStore(t, dir)
	var seen []*x509.Certificate
	s.OnChange(func(c *x509.Certificate) { seen = append(seen, c) })
	cert := s.Put(chain, key)
	if s.AgentSVID() != cert || !cert.Leaf.Equal(chain[0]) || len(cert.Certificate) != len(chain) {
		t.Fatal("Put did not put the SVID in force")
	}
	if len(seen) != 1 || !seen[0].Equal(chain[0]) {
		t.Fatalf("OnChange saw %d SVIDs, want the one put", len(seen))
	}
	if err := s.SaveBundle(tca.Bundle()); err != nil {
		t.Fatal(err)
	}
	filemode.Want(t, dir, fs.ModeDir|0o700)
	filemode.Want(t, filepath.Join(dir, svidFile), 0o600)
	filemode.Want(t, filepath.Join(dir, keyFile), 0o600)
	filemode.Want(t, filepath.Join(dir, bundleFile), 0o644)

	again, _ := newStore(t, dir)
	got, roots := again.Load(clk.Now())
	if got == nil || !got.Leaf.Equal(chain[0]) || again.AgentSVID() != got {
		t.Fatal("a new store did not load the SVID put")
	}
	if k, ok := got.PrivateKey.(crypto.Signer); !ok || !pki.KeyMatches(got.Leaf, k) {
		t.Error("the loaded key does not match the loaded SVID")
	}
	if len(roots) != len(tca.Bundle()) || !roots[0].Equal(tca.Bundle()[0]) {
		t.Errorf("loaded bundle has %d roots, want the CA's", len(roots))
	}
	if logs.String() != "" {
		t.Errorf("unexpected warnings: %s", logs)
	}

	// Memory only: nothing on disk, nothing loaded.
	mem, _ := newStore(t, "")
	mem.Put(chain, key)
	if err := mem.SaveBundle(tca.Bundle()); err != nil {
		t.Fatal(err)
	}
	if got, _ := mem.Load(clk.Now()); got != nil {
		t.Error("a store without a directory loaded something")
	}
}

func TestSVIDStoreLoadRefusesBadFiles(t *testing.T) {
	clk := rotate.NewFakeClock(epoch)
	tca := testca.New(t, testca.WithClock(clk.Now))
	id := spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a")
	chain, key := tca.IssueWorkload(t, id, time.Hour)
	_, otherKey := tca.IssueWorkload(t, id, time.Hour)
	svidPEM := pki.EncodeCertificates(chain...)
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	otherPEM, err := pki.MarshalPrivateKeyPEM(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		files      map[string][]byte
		now        time.Time
		wantSVID   bool
		wantBundle bool
		wantLog    string // "" : silent
	}{
		{name: "no directory", files: nil},
		{name: "no key file", files: map[string][]byte{svidFile: svidPEM}},
		{name: "SVID file empty", files: map[string][]byte{svidFile: {}, keyFile: keyPEM}, wantLog: "ignoring a corrupt persisted agent SVID"},
		{name: "SVID file not PEM", files: map[string][]byte{svidFile: []byte("garbage\x00"), keyFile: keyPEM}, wantLog: "ignoring a corrupt persisted agent SVID"},
		{name: "SVID file truncated", files: map[string][]byte{svidFile: svidPEM[:len(svidPEM)/2], keyFile: keyPEM}, wantLog: "ignoring a corrupt persisted agent SVID"},
		{name: "key file truncated", files: map[string][]byte{svidFile: svidPEM, keyFile: keyPEM[:len(keyPEM)/2]}, wantLog: "ignoring a corrupt persisted agent key"},
		{name: "key of another SVID", files: map[string][]byte{svidFile: svidPEM, keyFile: otherPEM}, wantLog: "does not match the persisted SVID"},
		{name: "SVID expired", files: map[string][]byte{svidFile: svidPEM, keyFile: keyPEM}, now: epoch.Add(2 * time.Hour)},
		{name: "corrupt bundle: the SVID is loaded without it", files: map[string][]byte{svidFile: svidPEM, keyFile: keyPEM, bundleFile: []byte("-----BEGIN CERTIFICATE-----\n")}, wantSVID: true, wantLog: "ignoring a corrupt persisted trust bundle"},
		{name: "no bundle", files: map[string][]byte{svidFile: svidPEM, keyFile: keyPEM}, wantSVID: true},
		{name: "SVID, key and bundle", files: map[string][]byte{svidFile: svidPEM, keyFile: keyPEM, bundleFile: pki.EncodeCertificates(tca.Bundle()...)}, wantSVID: true, wantBundle: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "agent")
			if tt.files != nil {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				for name, data := range tt.files {
					if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			now := tt.now
			if now.IsZero() {
				now = clk.Now()
			}
			s, logs := newStore(t, dir)
			cert, roots := s.Load(now)
			if got := cert != nil; got != tt.wantSVID {
				t.Fatalf("loaded an SVID: %v, want %v", got, tt.wantSVID)
			}
			if got := roots != nil; got != tt.wantBundle {
				t.Errorf("loaded a bundle: %v, want %v", got, tt.wantBundle)
			}
			if (s.AgentSVID() != nil) != tt.wantSVID {
				t.Errorf("the store holds %v after Load", s.AgentSVID())
			}
			out := logs.String()
			if tt.wantLog == "" && out != "" {
				t.Errorf("unexpected warnings: %s", out)
			}
			if tt.wantLog != "" && !strings.Contains(out, tt.wantLog) {
				t.Errorf("logs %q do not say %q", out, tt.wantLog)
			}
			if strings.Contains(out, "PRIVATE KEY") {
				t.Error("a warning carries key material")
			}
		})
	}
}
