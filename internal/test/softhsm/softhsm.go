// Package softhsm initialises SoftHSM2 tokens for tests, each in its own
// temporary directory (SOFTHSM2_CONF). SoftHSM2 comes from Debian's
// softhsm2 package, which `make test` installs (make softhsm).
package softhsm

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireEnv names the variable that, set to 1 (make test does), turns a
// missing SoftHSM2 into a test failure instead of a skip.
const RequireEnv = "MAYFLY_REQUIRE_SOFTHSM"

// modules are where Debian and other distributions put SoftHSM2's module.
var modules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
}

// Module returns SoftHSM2's PKCS#11 module, or skips the test when it is
// not installed (fails under MAYFLY_REQUIRE_SOFTHSM=1).
func Module(t testing.TB) string {
	t.Helper()
	for _, m := range modules {
		if _, err := os.Stat(m); err == nil {
			if _, err := exec.LookPath("softhsm2-util"); err == nil {
				return m
			}
		}
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("SoftHSM2 is not installed (%s=1): run make softhsm (apt-get install -y softhsm2)", RequireEnv)
	}
	t.Skip("SoftHSM2 is not installed: apt-get install -y softhsm2 (make softhsm) to run the PKCS#11 tests")
	return ""
}

// Token is an initialised SoftHSM2 token.
type Token struct {
	Module, Label, PIN, SOPIN string
	// PINFile holds PIN (0600).
	PINFile string
	// Dir is the token directory.
	Dir string
}

// NewToken initialises a token labelled label in a fresh directory and
// points SOFTHSM2_CONF at it for the rest of the test (so the test must
// not be parallel). SoftHSM2 reads SOFTHSM2_CONF when its module is first
// initialised in the process: close every PKCS#11 context of the test
// before it ends.
func NewToken(t testing.TB, label string) Token {
	t.Helper()
	mod := Module(t)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	tok := Token{Module: mod, Label: label, PIN: "1234-test-user", SOPIN: "5678-test-so", Dir: tokens}
	AddToken(t, label, tok.PIN, tok.SOPIN)
	tok.PINFile = filepath.Join(dir, "pin")
	if err := os.WriteFile(tok.PINFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return tok
}

// AddToken initialises one more token in the directory of SOFTHSM2_CONF.
func AddToken(t testing.TB, label, pin, soPIN string) {
	t.Helper()
	//nolint:gosec // G204: a fixed tool with the test's own arguments, no shell.
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", soPIN).CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v: %s", err, out)
	}
}
