package workloadattest

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// DefaultProcRoot is where procfs is mounted.
const DefaultProcRoot = "/proc"

// MaxCgroupFileSize bounds what [Proc.Cgroups] reads: a real cgroup file is a
// few hundred bytes (one line per v1 hierarchy).
const MaxCgroupFileSize = 64 << 10

// Proc reads process information from a procfs tree. Root is the mount
// point, "/proc" when empty; tests point it at a fake tree.
type Proc struct {
	Root string
}

func (p Proc) path(pid int, name string) (string, error) {
	if pid <= 0 {
		return "", fmt.Errorf("invalid pid %d", pid)
	}
	root := cmp.Or(p.Root, DefaultProcRoot)
	return filepath.Join(root, strconv.Itoa(pid), name), nil
}

// CgroupLine is one line of /proc/<pid>/cgroup:
// "hierarchy-ID:controller-list:cgroup-path". On cgroup v2 the only line is
// "0::<path>"; on v1 there is one line per hierarchy, and Controllers lists
// its controllers (or "name=systemd").
type CgroupLine struct {
	HierarchyID int
	Controllers []string // empty on the v2 line
	Path        string
}

// Cgroups reads and parses /proc/<pid>/cgroup. It fails on a file larger
// than [MaxCgroupFileSize], on an empty file, and on any malformed line,
// naming the line.
func (p Proc) Cgroups(pid int) ([]CgroupLine, error) {
	name, err := p.path(pid, "cgroup")
	if err != nil {
		return nil, err
	}
	data, err := readlimit.File(name, MaxCgroupFileSize)
	if err != nil {
		return nil, fmt.Errorf("reading cgroups of pid %d: %w", pid, err)
	}
	lines, err := ParseCgroups(data)
	if err != nil {
		return nil, fmt.Errorf("cgroups of pid %d: %w", pid, err)
	}
	return lines, nil
}

// ParseCgroups parses the content of a /proc/<pid>/cgroup file.
func ParseCgroups(data []byte) ([]CgroupLine, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("cgroup file is not valid UTF-8")
	}
	var out []CgroupLine
	for i, raw := range bytes.Split(data, []byte{'\n'}) {
		if len(raw) == 0 {
			continue // the trailing newline
		}
		l, err := parseCgroupLine(string(raw))
		if err != nil {
			return nil, fmt.Errorf("cgroup file line %d: %w", i+1, err)
		}
		out = append(out, l)
	}
	if len(out) == 0 {
		return nil, errors.New("cgroup file is empty")
	}
	return out, nil
}

func parseCgroupLine(s string) (CgroupLine, error) {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return CgroupLine{}, fmt.Errorf("control character %q", r)
		}
	}
	// The path is the rest of the line: cgroup names may contain ':'.
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 {
		return CgroupLine{}, fmt.Errorf("%q: want hierarchy-ID:controller-list:path", truncate(s))
	}
	id, err := strconv.Atoi(parts[0])
	if err != nil || id < 0 || parts[0] != strconv.Itoa(id) {
		return CgroupLine{}, fmt.Errorf("%q: hierarchy ID %q is not a non-negative decimal number", truncate(s), truncate(parts[0]))
	}
	var ctrls []string
	if parts[1] != "" {
		ctrls = strings.Split(parts[1], ",")
		for _, c := range ctrls {
			if c == "" {
				return CgroupLine{}, fmt.Errorf("%q: empty controller name", truncate(s))
			}
		}
	}
	if id == 0 && len(ctrls) != 0 {
		return CgroupLine{}, fmt.Errorf("%q: the cgroup v2 line (hierarchy 0) has no controllers", truncate(s))
	}
	if !strings.HasPrefix(parts[2], "/") {
		return CgroupLine{}, fmt.Errorf("%q: path %q is not absolute", truncate(s), truncate(parts[2]))
	}
	return CgroupLine{HierarchyID: id, Controllers: ctrls, Path: parts[2]}, nil
}

// Exe returns the target of /proc/<pid>/exe: the path of the executable the
// process runs, as seen in its mount namespace. The kernel appends
// " (deleted)" when the file was removed or replaced after exec.
func (p Proc) Exe(pid int) (string, error) {
	name, err := p.path(pid, "exe")
	if err != nil {
		return "", err
	}
	target, err := os.Readlink(name)
	if err != nil {
		return "", fmt.Errorf("reading executable of pid %d: %w", pid, err)
	}
	return target, nil
}

func truncate(s string) string {
	const max = 80
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}
