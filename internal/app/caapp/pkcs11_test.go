package caapp_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/pemfile"
	"github.com/mayfly-pki/mayfly/internal/test/softhsm"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// pkcs11Config is standaloneConfig with its keys in tok, state in dir.
func pkcs11Config(tok softhsm.Token, dir, pinFile string) string {
	return strings.Replace(standaloneConfig, "directory: DIR", "directory: "+dir, 1) + `keys:
  pkcs11:
    modulePath: ` + tok.Module + `
    token: ` + tok.Label + `
    pinFile: ` + pinFile + `
`
}

// waitServed returns the running CA once it serves, with its bundle.
func waitServed(t *testing.T, p *caProcess) *runningCA {
	t.Helper()
	select {
	case <-p.served:
	case <-p.exited:
		p.errChecked = true
		t.Fatalf("the CA exited before it served: %v", p.err)
	}
	bundle := pemfile.Certificates(t, filepath.Join(p.cfg.Directory, caapp.TrustBundleFile))
	return &runningCA{addr: p.addr, dir: p.cfg.Directory, logs: p.logs, bundle: bundle}
}

// TestStandaloneWithPKCS11Keys: a CA whose keys are in a SoftHSM2 token
// issues SVIDs that verify, keeps only key URIs in its state, and after a
// restart signs with the same keys.
func TestStandaloneWithPKCS11Keys(t *testing.T) {
	tok := softhsm.NewToken(t, "mayfly-ca")
	dir := filepath.Join(t.TempDir(), "state")
	text := pkcs11Config(tok, dir, tok.PINFile)

	p := runCA(t, text, caapp.Options{})
	r := waitServed(t, p)
	issue := func(r *runningCA) *x509.Certificate {
		t.Helper()
		a := r.attest(t, "host-a")
		key := testca.Key(t)
		resp, err := a.client.SignWorkloads(context.Background(), &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{
			{RequestId: "1", Csr: testca.CSR(t, key), SpiffeId: "spiffe://example.org/demo/server"},
		}})
		if err != nil {
			t.Fatalf("SignWorkloads: %v", err)
		}
		chain, err := issuerclient.ParseChain(resp.GetResults()[0].GetIssued().GetCertificateChain())
		if err != nil {
			t.Fatalf("issued chain: %v (%v)", err, resp.GetResults()[0].GetDenial())
		}
		if _, err := pki.VerifyX509SVID(chain[0], chain[1:], r.bundle, time.Now(), x509.ExtKeyUsageServerAuth); err != nil {
			t.Fatalf("the SVID signed with the token's key does not verify: %v", err)
		}
		return chain[1]
	}
	inter := issue(r)

	raw, err := os.ReadFile(filepath.Join(dir, authority.StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	var data map[string][]byte
	if err := json.Unmarshal(raw, &data); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{authority.KeyRootKey, authority.KeyIntermediateKey} {
		if !bytes.HasPrefix(data[k], []byte("pkcs11:")) || bytes.Contains(data[k], []byte(tok.PIN)) {
			t.Errorf("state %s = %q, want a pkcs11: URI without the PIN", k, data[k])
		}
	}

	// Restart on the same state and token.
	p.stop()
	<-p.exited
	p2 := runCA(t, text, caapp.Options{})
	r2 := waitServed(t, p2)
	if !r2.bundle[0].Equal(r.bundle[0]) {
		t.Fatal("the restarted CA has another root")
	}
	if again := issue(r2); !again.Equal(inter) {
		t.Fatal("the restarted CA signs with another intermediate")
	}
	if strings.Contains(p.logs.String()+p2.logs.String(), tok.PIN) {
		t.Fatal("the CA logged the PIN")
	}

	// The same state with a wrong PIN: the CA does not start, and says why.
	p2.stop()
	<-p2.exited
	wrong := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(wrong, []byte("0000-wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p3 := runCA(t, pkcs11Config(tok, dir, wrong), caapp.Options{})
	p3.errChecked = true
	select {
	case <-p3.exited:
	case <-p3.served:
		t.Fatal("the CA served with a wrong PIN")
	case <-time.After(60 * time.Second):
		t.Fatal("the CA neither failed nor served within 60s")
	}
	if p3.err == nil || !strings.Contains(p3.err.Error(), "refused the PIN from "+wrong) || strings.Contains(p3.err.Error(), "0000-wrong") {
		t.Fatalf("Run with a wrong PIN = %v, want 'refused the PIN from %s' without the PIN", p3.err, wrong)
	}
}

func TestConfigKeysPKCS11(t *testing.T) {
	head := strings.Replace(standaloneConfig, "directory: DIR", "directory: /var/lib/mayfly", 1)
	for name, tc := range map[string]struct{ keys, want string }{
		"valid":     {"keys:\n  pkcs11:\n    modulePath: /usr/lib/softhsm/libsofthsm2.so\n    token: ca\n    pinEnv: PIN\n", ""},
		"no_pin":    {"keys:\n  pkcs11:\n    modulePath: /usr/lib/softhsm/libsofthsm2.so\n    token: ca\n", "keys.pkcs11: set exactly one of pinFile, pinEnv"},
		"pin_value": {"keys:\n  pkcs11:\n    modulePath: /m.so\n    token: ca\n    pin: \"1234\"\n", "pin"},
		"ed25519":   {"keyType: ed25519\nkeys:\n  pkcs11:\n    modulePath: /m.so\n    token: ca\n    pinEnv: PIN\n", "keyType ed25519 cannot be generated"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := caapp.Parse([]byte(head + tc.keys))
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Parse = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestKeyCustodyDocExample: the configuration docs/key-custody.md shows
// parses.
func TestKeyCustodyDocExample(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "key-custody.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(raw), "```yaml\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/key-custody.md has no yaml block")
	}
	c, err := caapp.Parse([]byte(block))
	if err != nil {
		t.Fatalf("the example of docs/key-custody.md does not parse: %v", err)
	}
	if c.PKCS11 == nil || c.PKCS11.Token != "mayfly-ca" {
		t.Fatalf("keys.pkcs11 = %+v", c.PKCS11)
	}
}
