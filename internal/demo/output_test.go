package demo_test

import (
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/demo"
)

// stdout returns what f printed to os.Stdout.
func stdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	f()
	os.Stdout = saved
	_ = w.Close()
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestChangesPrintsEachChangeOnce: a value is printed when it differs from
// the last one printed for the same place and subject, and only then.
func TestChangesPrintsEachChangeOnce(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 678e6, time.UTC)
	c := demo.Changes{}
	got := stdout(t, func() {
		c.Print(now, "files/client", "leaf now under root", "aaaa")
		c.Print(now, "files/client", "leaf now under root", "aaaa")
		c.Print(now, "files/server", "leaf now under root", "aaaa")
		c.Print(now, "files/client", "ca.crt now holds", "1 roots: aaaa")
		c.Print(now, "files/client", "leaf now under root", "bbbb")
	})
	want := []string{
		"03:04:05.678 [files/client] leaf now under root aaaa  t=1893553445.678",
		"03:04:05.678 [files/server] leaf now under root aaaa  t=1893553445.678",
		"03:04:05.678 [files/client] ca.crt now holds 1 roots: aaaa  t=1893553445.678",
		"03:04:05.678 [files/client] leaf now under root bbbb  t=1893553445.678",
	}
	if lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n"); strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("printed:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}
