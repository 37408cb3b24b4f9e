// Package childproc runs this test binary again as a child process that
// runs one helper test, for tests and benchmarks whose other side must be
// another process (its own CPU time, another uid, its own open files).
// The helper test reads what it needs from environment variables and is
// skipped when run any other way. Only tests import it.
package childproc

import (
	"os"
	"os/exec"
	"testing"
)

// Command returns the command that runs this test binary again with only
// the test named test (once, verbose), with env ("NAME=value") added to
// this process's environment.
func Command(test string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.v") //nolint:gosec // this very test binary, run again
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// Getenv returns the environment variable name of a helper test, which
// runs only as parent's child process: without it (a plain `go test`
// run), the helper test is skipped, saying whose helper it is.
func Getenv(t testing.TB, name, parent string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Skipf("helper process of %s; runs only as its child", parent)
	}
	return v
}
