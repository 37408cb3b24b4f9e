package upstreamtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/cloudflare/cfssl/api/signhandler"
	cfconfig "github.com/cloudflare/cfssl/config"
	cflog "github.com/cloudflare/cfssl/log"
	"github.com/cloudflare/cfssl/signer"
	"github.com/cloudflare/cfssl/signer/local"

	"github.com/mayfly-pki/mayfly/internal/upstream"
)

// CFSSLPolicy is a cfssl signing policy with an "intermediate" profile
// that makes mayfly intermediates (docs/upstream.md shows the same): %[1]s
// is the auth key's hex.
const CFSSLPolicy = `{
  "signing": {
    "default": {"expiry": "1h", "usages": ["digital signature", "server auth"], "auth_key": "mayfly"},
    "profiles": {
      "intermediate": {
        "expiry": "48h",
        "usages": ["cert sign", "crl sign"],
        "ca_constraint": {"is_ca": true, "max_path_len": 1},
        "auth_key": "mayfly"
      },
      "pathlen0": {
        "expiry": "48h",
        "usages": ["cert sign", "crl sign"],
        "ca_constraint": {"is_ca": true, "max_path_len": 0, "max_path_len_zero": true},
        "auth_key": "mayfly"
      },
      "unlimited": {
        "expiry": "48h",
        "usages": ["cert sign", "crl sign"],
        "ca_constraint": {"is_ca": true},
        "auth_key": "mayfly"
      }
    }
  },
  "auth_keys": {"mayfly": {"type": "standard", "key": "%[1]s"}}
}`

// CFSSLOptions shape the test cfssl.
type CFSSLOptions struct {
	// Root and Signer: cfssl signs with Signer, under Root (default: new
	// ones; the signer has path length 2, room for mayfly's issuing CA
	// and intermediate).
	Root, Signer *CA
	// Handler wraps the auth-sign handler (a slow or failing server).
	Handler func(http.Handler) http.Handler
}

// CFSSL is a running cfssl auth-sign API and the upstream config that
// reaches it.
type CFSSL struct {
	Root, Signer *CA
	Config       upstream.CFSSLConfig
	Server       *httptest.Server
	Dir          string
}

// NewCFSSL starts cfssl's auth-sign handler over TLS (httptest) and stops
// it when the test ends.
func NewCFSSL(t testing.TB, o CFSSLOptions) *CFSSL {
	t.Helper()
	cflog.Level = cflog.LevelFatal + 1
	dir := t.TempDir()
	if o.Root == nil {
		o.Root = NewCA(t, "Corp cfssl root", nil, -1)
	}
	if o.Signer == nil {
		o.Signer = NewCA(t, "Corp cfssl signer", o.Root, 2)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	hexKey := hex.EncodeToString(key)
	cfg, err := cfconfig.LoadConfig(fmt.Appendf(nil, CFSSLPolicy, hexKey))
	if err != nil {
		t.Fatalf("cfssl policy: %v", err)
	}
	s, err := local.NewSigner(o.Signer.Key, o.Signer.Cert, signer.DefaultSigAlgo(o.Signer.Key), cfg.Signing)
	if err != nil {
		t.Fatalf("cfssl signer: %v", err)
	}
	h, err := signhandler.NewAuthHandlerFromSigner(s)
	if err != nil {
		t.Fatalf("cfssl handler: %v", err)
	}
	handler := http.Handler(http.MaxBytesHandler(h, 1<<20))
	if o.Handler != nil {
		handler = o.Handler(handler)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/cfssl/authsign", handler)
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	c := &CFSSL{Root: o.Root, Signer: o.Signer, Server: srv, Dir: dir}
	c.Config = upstream.CFSSLConfig{
		URL:         srv.URL,
		CAFile:      WriteCert(t, dir, "tls-ca.crt", srv.Certificate()),
		AuthKeyFile: WriteFile(t, dir, "auth.key", []byte(hexKey+"\n")),
		BundleFile:  WriteCert(t, dir, "bundle.crt", o.Signer.Cert, o.Root.Cert),
	}
	return c
}
