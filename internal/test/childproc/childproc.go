// Package childproc runs this test binary again as a child process that
// runs one helper test, for tests and benchmarks whose other side must be
// another process (its own CPU time, another uid, its own open files).
// The helper test reads what it needs from environment variables and is
// skipped when run any other way. Only tests import it.
package childproc

import (
	"io"
	"os"
	"os/exec"
	"sync"
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

// Child is a running child process that the parent talks to over its
// standard input and output.
type Child struct {
	// Stdin is the child's standard input. Its end (Stop closes it) is
	// the helper test's sign to finish.
	Stdin io.WriteCloser
	// Stdout is the child's standard output. Read what you need of it
	// before Stop, which closes it once the child has exited.
	Stdout io.Reader

	cmd  *exec.Cmd
	once sync.Once
	err  error
}

// Start starts cmd with pipes to its standard input and output. Its
// standard error goes where cmd.Stderr says or, left nil, into the same
// pipe as its standard output, so that whoever reads the child also sees
// its failures. The child is stopped at tb's cleanup if the caller has not
// stopped it, how it exited then left unchecked.
func Start(tb testing.TB, cmd *exec.Cmd) *Child {
	tb.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if cmd.Stderr == nil {
		cmd.Stderr = cmd.Stdout
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	c := &Child{Stdin: stdin, Stdout: stdout, cmd: cmd}
	tb.Cleanup(func() { _ = c.Stop() })
	return c
}

// Stop closes the child's standard input, waits for it to exit and returns
// how it exited (cmd.Wait's error); a second call returns the same.
func (c *Child) Stop() error {
	c.once.Do(func() {
		_ = c.Stdin.Close()
		c.err = c.cmd.Wait()
	})
	return c.err
}
