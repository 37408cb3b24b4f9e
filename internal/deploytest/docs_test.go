package deploytest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
)

// shCommands returns the lines of the ```sh blocks of a doc.
func shCommands(t *testing.T, doc string) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", doc))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for line := range strings.SplitSeq(string(raw), "\n") {
		switch {
		case strings.HasPrefix(line, "```sh"):
			in = true
		case strings.HasPrefix(line, "```"):
			in = false
		case in && strings.TrimSpace(line) != "":
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// usageOf returns a binary's usage text (its help output).
func usageOf(main func([]string, *bytes.Buffer) int) string {
	var out bytes.Buffer
	main([]string{"--help"}, &out)
	return out.String()
}

// TestInstallDoc checks the procedures of docs/install.md and
// docs/upgrade.md: every helm command renders the chart with the values it
// names (install and upgrade as helm template), every kustomize directory
// builds, every make target exists and every ca/agent subcommand is one of
// the binaries' own.
func TestInstallDoc(t *testing.T) {
	helm, kustomize := helmBinary(t), kustomizeBinary(t)
	root := repoRoot(t)
	makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	caUsage := usageOf(func(a []string, b *bytes.Buffer) int { return caapp.Main(a, b, b) })
	agentUsage := usageOf(func(a []string, b *bytes.Buffer) int { return agentapp.Main(a, b, b) })
	subcommand := regexp.MustCompile(`(?:^|-- |\| )(ca|agent) ([a-z-]+)`)
	counts := map[string]int{}
	for _, doc := range []string{"install.md", "upgrade.md"} {
		for _, line := range shCommands(t, doc) {
			f := strings.Fields(line)
			switch {
			case len(f) > 2 && f[0] == "helm" && slices.Contains([]string{"install", "upgrade", "template"}, f[1]):
				args := []string{"template"}
				rest := slices.DeleteFunc(slices.Clone(f[2:]), func(s string) bool { return s == "--install" })
				args = append(args, rest...)
				cmd := exec.Command(helm, args...)
				cmd.Dir = root
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("%s: %q does not render: %v\n%s", doc, line, err, out)
				}
				counts["helm"]++
			case len(f) >= 4 && f[0] == "kubectl" && (f[1] == "apply" || f[1] == "delete") && f[2] == "-k":
				cmd := exec.Command(kustomize, "build", f[3])
				cmd.Dir = root
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("%s: %q: kustomize build %s: %v\n%s", doc, line, f[3], err, out)
				}
				counts["kustomize"]++
			case f[0] == "make":
				for _, target := range f[1:] {
					if strings.HasPrefix(target, "#") {
						break // a comment ends the command
					}
					if strings.Contains(target, "=") {
						continue // a variable, not a target
					}
					if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `:`).Match(makefile) {
						t.Errorf("%s: %q: no make target %s", doc, line, target)
					}
				}
				counts["make"]++
			}
			for _, m := range subcommand.FindAllStringSubmatch(line, -1) {
				usage := caUsage
				if m[1] == "agent" {
					usage = agentUsage
				}
				if !strings.Contains(usage, m[1]+" "+m[2]) {
					t.Errorf("%s: %q: %s has no subcommand %s", doc, line, m[1], m[2])
				}
				counts[m[1]]++
			}
		}
	}
	for _, kind := range []string{"helm", "kustomize", "ca"} {
		if counts[kind] == 0 {
			t.Errorf("no %s command checked: the docs' sh blocks changed shape", kind)
		}
	}
	t.Logf("checked: %v", counts)
}
