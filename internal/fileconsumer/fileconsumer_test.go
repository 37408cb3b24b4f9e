package fileconsumer

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// writeDir writes a certificate directory: a leaf of ca for id, its key,
// and roots as ca.crt.
func writeDir(t *testing.T, ca *testca.CA, id string, roots ...*testca.CA) string {
	t.Helper()
	dir := t.TempDir()
	chain, key := ca.IssueWorkload(t, spiffeid.RequireFromString(id), time.Hour)
	keyPEM, err := pki.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	var bundle []byte
	for _, r := range roots {
		bundle = append(bundle, r.BundlePEM()...)
	}
	for name, data := range map[string][]byte{CertFile: pki.EncodeCertificates(chain...), KeyFile: keyPEM, BundleFile: bundle} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const (
	serverID = "spiffe://example.org/ns/default/sa/server"
	clientID = "spiffe://example.org/ns/default/sa/client"
)

func TestHandshake(t *testing.T) {
	ca, other := testca.New(t), testca.New(t)
	pair := func(t *testing.T, serverDir, clientDir string) *Pair {
		t.Helper()
		p, err := Listen(serverDir, clientDir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	t.Run("succeeds when each ca.crt holds the other's root", func(t *testing.T) {
		p := pair(t, writeDir(t, ca, serverID, ca), writeDir(t, ca, clientID, ca, other))
		if err := p.Handshake(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the client refuses a server under a root its ca.crt lacks", func(t *testing.T) {
		p := pair(t, writeDir(t, other, serverID, other, ca), writeDir(t, ca, clientID, ca))
		if err := p.Handshake(); err == nil || !strings.Contains(err.Error(), "unknown authority") {
			t.Fatalf("Handshake = %v, want the client's verification failure", err)
		}
	})
	t.Run("the server refuses a client under a root its ca.crt lacks", func(t *testing.T) {
		p := pair(t, writeDir(t, ca, serverID, ca), writeDir(t, other, clientID, other, ca))
		if err := p.Handshake(); err == nil || !strings.Contains(err.Error(), "server") {
			t.Fatalf("Handshake = %v, want the server's refusal", err)
		}
	})
}

func TestReadRejectsBadDirectories(t *testing.T) {
	ca := testca.New(t)
	for _, tc := range []struct {
		name  string
		spoil func(dir string) error
		want  string
	}{
		{"missing key", func(dir string) error { return os.Remove(filepath.Join(dir, KeyFile)) }, "no such file"},
		{"key of another certificate", func(dir string) error {
			other := writeDir(t, ca, clientID, ca)
			raw, err := os.ReadFile(filepath.Join(other, KeyFile))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, KeyFile), raw, 0o600)
		}, "private key does not match"},
		{"empty ca.crt", func(dir string) error { return os.WriteFile(filepath.Join(dir, BundleFile), nil, 0o600) }, "no certificate"},
		{"garbage in ca.crt", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, BundleFile), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600)
		}, "ca.crt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeDir(t, ca, serverID, ca)
			if err := tc.spoil(dir); err != nil {
				t.Fatal(err)
			}
			if _, err := Read(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Read = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestServeDial: the two halves in two programs, as the e2e-node pods run
// them: the server reports each outcome, the client fails when either side
// refused.
func TestServeDial(t *testing.T) {
	ca, other := testca.New(t), testca.New(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	outcomes := make(chan error, 4)
	go Serve(lis, writeDir(t, ca, serverID, ca), func(err error) { outcomes <- err })

	if err := Dial(lis.Addr().String(), writeDir(t, ca, clientID, ca)); err != nil {
		t.Fatalf("Dial with a client under the server's root: %v", err)
	}
	if err := <-outcomes; err != nil {
		t.Fatalf("server: %v", err)
	}
	if err := Dial(lis.Addr().String(), writeDir(t, other, clientID, ca, other)); err == nil {
		t.Fatal("Dial with a client under a root the server does not hold succeeded")
	}
	if err := <-outcomes; err == nil || !strings.Contains(err.Error(), "server:") {
		t.Fatalf("server outcome of a refused client = %v, want a server error", err)
	}
	if err := Dial(lis.Addr().String(), t.TempDir()); err == nil || !strings.Contains(err.Error(), "client:") {
		t.Fatalf("Dial from an empty directory = %v, want a client error", err)
	}
}
