// Package version reports what a mayfly binary was built from: the release
// version (set at link time with
// -ldflags "-X github.com/mayfly-pki/mayfly/internal/version.Version=v0.2.0")
// and, from the Go build info, the module version, VCS revision and time, and
// the Go toolchain.
package version

import (
	"cmp"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Version is the release version, set by the linker; empty in a plain
// `go build`, where the build info's module version or "devel" stands in.
var Version string

// Info is what a binary knows about its build.
type Info struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get reads the build info of the running binary.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(Version, bi)
}

func fromBuildInfo(linked string, bi *debug.BuildInfo) Info {
	info := Info{GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	mod := ""
	if bi != nil {
		info.GoVersion = cmp.Or(bi.GoVersion, info.GoVersion)
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			mod = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	info.Version = cmp.Or(linked, mod, "devel")
	return info
}

// String is the one line `ca version` and `agent version` print.
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", i.Version)
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		fmt.Fprintf(&b, " revision %s", rev)
		if i.Modified {
			b.WriteString("+dirty")
		}
	}
	if i.Time != "" {
		fmt.Fprintf(&b, " built from %s", i.Time)
	}
	fmt.Fprintf(&b, " %s %s", i.GoVersion, i.Platform)
	return b.String()
}
