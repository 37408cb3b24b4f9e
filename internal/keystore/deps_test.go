package keystore_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestPKCS11OnlyInTheCABinary: the agent never links PKCS#11 (nor the KMS
// layer); the CA built with cgo does; the CA built with CGO_ENABLED=0 (the
// static release images) carries step's stub instead of the C bindings.
func TestPKCS11OnlyInTheCABinary(t *testing.T) {
	deps := func(pkg string, env ...string) string {
		cmd := exec.Command("go", "list", "-deps", pkg)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		return string(out)
	}
	has := func(list, pkg string) bool { return strings.Contains(list, pkg+"\n") }
	pkcs11Pkgs := []string{"github.com/miekg/pkcs11", "github.com/ThalesIgnite/crypto11"}
	agent := deps("github.com/mayfly-pki/mayfly/cmd/agent")
	for _, p := range append(pkcs11Pkgs, "go.step.sm/crypto/kms/pkcs11", "github.com/mayfly-pki/mayfly/internal/keystore") {
		if has(agent, p) {
			t.Errorf("the agent binary imports %s", p)
		}
	}
	ca := deps("github.com/mayfly-pki/mayfly/cmd/ca", "CGO_ENABLED=1")
	for _, p := range append(pkcs11Pkgs, "go.step.sm/crypto/kms/pkcs11", "github.com/mayfly-pki/mayfly/internal/keystore") {
		if !has(ca, p) {
			t.Errorf("the CA built with cgo does not import %s", p)
		}
	}
	static := deps("github.com/mayfly-pki/mayfly/cmd/ca", "CGO_ENABLED=0")
	for _, p := range pkcs11Pkgs {
		if has(static, p) {
			t.Errorf("the CA built with CGO_ENABLED=0 imports %s", p)
		}
	}
}
