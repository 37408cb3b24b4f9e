// Package prereq gives tests what they need from outside the Go build (a
// tool, a control plane's binaries) through an environment variable that
// `make test` sets. Without it, a test is skipped on a developer's machine
// and fails in CI (CI=true): CI never passes by skipping. Only tests
// import it.
package prereq

import (
	"os"
	"testing"
)

// Env returns the value of the environment variable name. When it is
// unset, Env fails the test in CI and skips it elsewhere, saying that name
// is not set and how to set it (how).
func Env(t testing.TB, name, how string) string {
	t.Helper()
	if v := os.Getenv(name); v != "" {
		return v
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not set in CI: %s", name, how)
	}
	t.Skipf("%s not set: %s", name, how)
	return ""
}
