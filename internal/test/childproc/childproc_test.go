package childproc_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/test/childproc"
)

// TestCommand runs TestHelper as a child: it gets the variable, and it is
// the only test that runs.
func TestCommand(t *testing.T) {
	out, err := childproc.Command("TestHelper", "MAYFLY_CHILDPROC_WORD=hello").CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "WORD hello") {
		t.Errorf("child output %q lacks the helper's line", out)
	}
	if strings.Contains(string(out), "TestCommand") {
		t.Errorf("the child ran more than the helper test:\n%s", out)
	}
}

// TestHelper is TestCommand's child; skipped when run any other way.
func TestHelper(t *testing.T) {
	word := childproc.Getenv(t, "MAYFLY_CHILDPROC_WORD", "TestCommand")
	t.Logf("WORD %s", word)
}

// TestStart talks to TestEchoHelper through Start's pipes: what is written
// to Stdin comes back on Stdout, the child's standard error joins its
// standard output unless cmd.Stderr is set, and Stop ends the child by
// closing its stdin and returns how it exited.
func TestStart(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lines   []string
		stderr  bool // cmd.Stderr set to a buffer
		wantErr bool
	}{
		{name: "stderr joins stdout and the child exits 0 at Stop", lines: []string{"hello"}},
		{name: "stderr goes where cmd.Stderr says", lines: []string{"hello"}, stderr: true},
		{name: "Stop returns the exit error of a failing child", lines: []string{"fail", "hello"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := childproc.Command("TestEchoHelper", "MAYFLY_CHILDPROC_ECHO=1")
			var stderr bytes.Buffer
			if tc.stderr {
				cmd.Stderr = &stderr
			}
			c := childproc.Start(t, cmd)
			for _, l := range tc.lines {
				if _, err := io.WriteString(c.Stdin, l+"\n"); err != nil {
					t.Fatal(err)
				}
			}
			// The child answers the lines in order: at "ECHO hello" it
			// has read them all (and written its stderr line before).
			var seen []string
			sc := bufio.NewScanner(c.Stdout)
			for sc.Scan() && sc.Text() != "ECHO hello" {
				seen = append(seen, sc.Text())
			}
			if sc.Err() != nil || sc.Text() != "ECHO hello" {
				t.Fatalf("child ended before echoing hello (%v); it said:\n%s", sc.Err(), strings.Join(seen, "\n"))
			}

			err := c.Stop()
			var exit *exec.ExitError
			if tc.wantErr != errors.As(err, &exit) {
				t.Errorf("Stop = %v, want an exit error: %v", err, tc.wantErr)
			}
			if again := c.Stop(); !errors.Is(again, err) {
				t.Errorf("second Stop = %v, want the first's %v", again, err)
			}
			inStdout := strings.Contains(strings.Join(seen, "\n"), "STDERR ready")
			inStderr := strings.Contains(stderr.String(), "STDERR ready")
			if inStdout == tc.stderr || inStderr != tc.stderr {
				t.Errorf("child's stderr line: in stdout %v, in cmd.Stderr %v; want it in cmd.Stderr only: %v", inStdout, inStderr, tc.stderr)
			}
		})
	}
}

// TestEchoHelper is TestStart's child; skipped when run any other way. It
// writes a line to stderr, then echoes each line of stdin ("fail" fails
// the test, so the process exits 1) until stdin ends.
func TestEchoHelper(t *testing.T) {
	childproc.Getenv(t, "MAYFLY_CHILDPROC_ECHO", "TestStart")
	fmt.Fprintln(os.Stderr, "STDERR ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "fail" {
			t.Error("asked to fail")
			continue
		}
		fmt.Printf("ECHO %s\n", sc.Text())
	}
}
