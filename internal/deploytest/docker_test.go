package deploytest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dockerfile is the little of a Dockerfile this lint needs.
type dockerfile struct {
	stages []stage
}

type stage struct {
	image string // as written after FROM
	name  string // AS name, or ""
	user  string // last USER of the stage, or ""
	lines []string
}

// parseDockerfile joins continuation lines, drops comments and splits the
// file into stages.
func parseDockerfile(src string) dockerfile {
	var df dockerfile
	var logical []string
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(src))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		logical = append(logical, cur.String())
		cur.Reset()
	}
	for _, l := range logical {
		fields := strings.Fields(l)
		if len(fields) == 0 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			var s stage
			args := fields[1:]
			for len(args) > 0 && strings.HasPrefix(args[0], "--") { // --platform=...
				args = args[1:]
			}
			if len(args) > 0 {
				s.image = args[0]
			}
			if len(args) == 3 && strings.EqualFold(args[1], "AS") {
				s.name = args[2]
			}
			df.stages = append(df.stages, s)
			continue
		case "USER":
			if len(df.stages) > 0 && len(fields) > 1 {
				df.stages[len(df.stages)-1].user = fields[1]
			}
		}
		if len(df.stages) > 0 {
			st := &df.stages[len(df.stages)-1]
			st.lines = append(st.lines, l)
		}
	}
	return df
}

var urlRE = regexp.MustCompile(`(?i)\b(https?|ftp)://`)

// lintDockerfile returns what is wrong with a Dockerfile: base images not
// pinned to a tag (or digest), `latest`, ADD of a URL, and for a non-root
// image a missing or root USER in the final stage.
func lintDockerfile(src string, wantNonRoot bool) []string {
	df := parseDockerfile(src)
	if len(df.stages) == 0 {
		return []string{"no FROM"}
	}
	var problems []string
	names := map[string]bool{}
	for i, s := range df.stages {
		switch {
		case names[s.image]:
			// FROM an earlier stage.
		default:
			if msg := imageProblem(s.image); msg != "" {
				problems = append(problems, fmt.Sprintf("stage %d: %s", i, msg))
			}
		}
		if s.name != "" {
			names[s.name] = true
		}
		for _, l := range s.lines {
			f := strings.Fields(l)
			if strings.EqualFold(f[0], "ADD") && urlRE.MatchString(l) {
				problems = append(problems, fmt.Sprintf("stage %d: ADD of a URL (%s): download in a RUN with a checksum instead", i, l))
			}
		}
	}
	final := df.stages[len(df.stages)-1]
	if wantNonRoot {
		switch u := strings.SplitN(final.user, ":", 2)[0]; u {
		case "":
			problems = append(problems, "final stage: no USER")
		case "0", "root":
			problems = append(problems, "final stage: USER is root")
		}
	}
	return problems
}

// imageProblem says what is wrong with an image reference, or "".
func imageProblem(ref string) string {
	if ref == "" {
		return "empty image reference"
	}
	if strings.Contains(ref, "@sha256:") {
		return ""
	}
	last := ref[strings.LastIndex(ref, "/")+1:]
	i := strings.LastIndex(last, ":")
	if i < 0 {
		return fmt.Sprintf("image %s has no tag", ref)
	}
	if tag := last[i+1:]; tag == "latest" || strings.HasPrefix(tag, "latest-") {
		return fmt.Sprintf("image %s uses a latest tag", ref)
	}
	return ""
}

func TestDockerfileLint(t *testing.T) {
	for _, tc := range []struct {
		name       string
		src        string
		nonRoot    bool
		wantIssues int
	}{
		{"pinned multi-stage non-root", "FROM golang:1.26 AS build\nRUN go build\nFROM gcr.io/distroless/static-debian12:nonroot\nCOPY --from=build /a /a\nUSER 65532:65532\n", true, 0},
		{"digest", "FROM alpine@sha256:0123\nUSER 1000\n", true, 0},
		{"from an earlier stage", "FROM golang:1.26 AS build\nFROM build\nUSER 1000\n", true, 0},
		{"untagged", "FROM golang\nUSER 1\n", true, 1},
		{"latest", "FROM golang:latest\nUSER 1\n", true, 1},
		{"registry port is not a tag", "FROM localhost:5000/golang\nUSER 1\n", true, 1},
		{"ADD of a URL", "FROM golang:1.26\nADD \\\n  https://example.com/x.tgz /x\nUSER 1\n", true, 1},
		{"no USER", "FROM golang:1.26\n", true, 1},
		{"root USER", "FROM golang:1.26\nUSER 0:0\n", true, 1},
		{"root allowed", "FROM golang:1.26\nUSER root\n", false, 0},
		{"USER of the builder does not count", "FROM golang:1.26 AS b\nUSER 1\nFROM scratch:x\n", true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := lintDockerfile(tc.src, tc.nonRoot)
			if len(got) != tc.wantIssues {
				t.Errorf("lint = %q, want %d problem(s)", got, tc.wantIssues)
			}
		})
	}
}

// TestDockerfiles lints deploy/docker. The images cannot be built here (no
// Docker engine); this catches the mistakes that do not need a build.
func TestDockerfiles(t *testing.T) {
	for _, tc := range []struct {
		file    string
		nonRoot bool // the agent runs as root for hostPID and CSI mounts
		pkg     string
	}{
		{"ca.Dockerfile", true, "./cmd/ca"},
		{"agent.Dockerfile", false, "./cmd/agent"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "docker", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			src := string(raw)
			for _, p := range lintDockerfile(src, tc.nonRoot) {
				t.Error(p)
			}
			df := parseDockerfile(src)
			if len(df.stages) < 2 {
				t.Errorf("%d stage(s), want a builder and a runtime stage", len(df.stages))
			}
			if final := df.stages[len(df.stages)-1].image; !strings.HasPrefix(final, "gcr.io/distroless/static-debian12:") {
				t.Errorf("runtime image %s, want gcr.io/distroless/static-debian12", final)
			}
			for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", tc.pkg} {
				if !strings.Contains(src, want) {
					t.Errorf("the build does not use %q", want)
				}
			}
		})
	}
}
