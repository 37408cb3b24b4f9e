package pemfile_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/test/pemfile"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

func TestCertificates(t *testing.T) {
	ca := testca.New(t)
	path := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(path, ca.BundlePEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	certs := pemfile.Certificates(t, path)
	if len(certs) != 1 || !certs[0].Equal(ca.Root) {
		t.Fatalf("read %d certificates, want the one root", len(certs))
	}
}
