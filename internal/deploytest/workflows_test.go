package deploytest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// actionlintVersion is the version the Makefile installs (make actionlint).
const actionlintVersion = "v1.7.12"

func actionlintBinary(t testing.TB) string {
	t.Helper()
	return pinnedTool(t, "MAYFLY_ACTIONLINT", "`make test` or `make actionlint`",
		"github.com/rhysd/actionlint/cmd/actionlint@"+actionlintVersion, "actionlint")
}

// runActionlint runs actionlint on files from dir (shellcheck and pyflakes
// off: neither is installed by the Makefile).
func runActionlint(t *testing.T, dir string, files ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(actionlintBinary(t), append([]string{"-shellcheck=", "-pyflakes=", "-no-color"}, files...)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestWorkflows checks every workflow of .github/workflows with actionlint,
// and that actionlint does find a broken one (so a pass means something).
func TestWorkflows(t *testing.T) {
	root := repoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, ".github", "workflows", "*.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no workflow in .github/workflows")
	}
	if out, err := runActionlint(t, root, files...); err != nil {
		t.Fatalf("actionlint: %v\n%s", err, out)
	}

	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".github", "workflows"), 0o700); err != nil {
		t.Fatal(err)
	}
	broken := "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nosuchfield }}\n"
	bad := filepath.Join(dir, ".github", "workflows", "broken.yml")
	if err := os.WriteFile(bad, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runActionlint(t, dir, bad); err == nil {
		t.Errorf("actionlint accepted a workflow naming an unknown context field:\n%s", out)
	}
}
