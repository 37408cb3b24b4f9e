package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/mayfly-pki/mayfly", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123"},
			{Key: "vcs.time", Value: "2026-12-06T15:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	cases := []struct {
		name, linked, want string
		bi                 *debug.BuildInfo
	}{
		{"linker wins", "v0.2.0", "v0.2.0", bi},
		{"devel module", "", "devel", bi},
		{"module version", "", "v0.1.1", &debug.BuildInfo{Main: debug.Module{Version: "v0.1.1"}}},
		{"no build info", "", "devel", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := fromBuildInfo(c.linked, c.bi)
			if got.Version != c.want {
				t.Fatalf("Version = %q, want %q", got.Version, c.want)
			}
			if got.GoVersion == "" || got.Platform == "" {
				t.Fatalf("missing Go version or platform: %+v", got)
			}
		})
	}
	s := fromBuildInfo("v0.2.0", bi).String()
	for _, want := range []string{"v0.2.0", "revision 0123456789ab+dirty", "2026-12-06T15:00:00Z", "go1.26.8"} {
		if !strings.Contains(s, want) {
			t.Errorf("String() = %q, missing %q", s, want)
		}
	}
}

func TestGetRunningBinary(t *testing.T) {
	if got := Get(); got.Version == "" || got.GoVersion == "" {
		t.Fatalf("Get() = %+v", got)
	}
}
