package childproc_test

import (
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
