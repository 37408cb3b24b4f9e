package keystore_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestStaticCARefusesPKCS11: the ca built with CGO_ENABLED=0 (as the
// release images are) answers keys.pkcs11 with an error that says what to
// do, before it serves anything.
func TestStaticCARefusesPKCS11(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the ca binary; skipped with -short")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "ca")
	build := exec.Command("go", "build", "-o", bin, "github.com/mayfly-pki/mayfly/cmd/ca")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "ca.yaml")
	writeFile(t, cfg, `apiVersion: mayfly.dev/v1alpha1
kind: CAConfig
trustDomain: example.org
directory: `+filepath.Join(dir, "state")+`
listenAddress: 127.0.0.1:0
healthAddress: "off"
statusSocket: "off"
keys:
  pkcs11:
    modulePath: /usr/lib/softhsm/libsofthsm2.so
    token: mayfly
    pinEnv: MAYFLY_TEST_PIN
`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := exec.CommandContext(ctx, bin, "run", "--config", cfg)
	run.Env = append(os.Environ(), "MAYFLY_TEST_PIN=4321-secret")
	out, err := run.CombinedOutput()
	if err == nil {
		t.Fatalf("the static ca ran with keys.pkcs11:\n%s", out)
	}
	if !strings.Contains(string(out), "no PKCS#11 support") || !strings.Contains(string(out), "make build-pkcs11") {
		t.Fatalf("the static ca's error does not say what to do:\n%s", out)
	}
	if strings.Contains(string(out), "4321-secret") {
		t.Fatalf("the output shows the PIN:\n%s", out)
	}
}
