package agentapp

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mayfly-pki/mayfly/internal/workloadapi"
)

func TestFitDescriptors(t *testing.T) {
	def := workloadapi.DefaultLimits()
	for _, tc := range []struct {
		name            string
		openFiles       uint64
		total, perUID   int
		wantErrContains string
	}{
		{"a_large_limit_keeps_the_defaults", 1 << 20, 4096, 256, ""},
		{"room_for_exactly_the_default", 512 + 2*4096, 4096, 256, ""},
		{"one_short_of_the_default_lowers_it", 512 + 2*4096 - 1, 4095, 256, ""},
		{"1024_files_leave_256_connections", 1024, 256, 256, ""},
		{"per_uid_never_exceeds_the_total", 512 + 2*100, 100, 100, ""},
		{"the_reserve_alone_does_not_fit", 513, 0, 0, "RLIMIT_NOFILE is 513: the agent needs at least 514"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fitDescriptors(def, tc.openFiles)
			if tc.wantErrContains != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrContains) {
					t.Fatalf("fitDescriptors = %v, want an error containing %q", err, tc.wantErrContains)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.MaxConnections != tc.total || got.MaxConnectionsPerUID != tc.perUID {
				t.Fatalf("got %d total, %d per uid; want %d and %d", got.MaxConnections, got.MaxConnectionsPerUID, tc.total, tc.perUID)
			}
			if 2*got.MaxConnections+reservedDescriptors > int(tc.openFiles) {
				t.Fatalf("%d connections do not fit in %d descriptors with the reserve", got.MaxConnections, tc.openFiles)
			}
		})
	}
}

func TestRaiseOpenFilesLimit(t *testing.T) {
	n, err := raiseOpenFilesLimit()
	if err != nil {
		t.Fatal(err)
	}
	var hard uint64
	if hard, err = hardOpenFiles(); err != nil {
		t.Fatal(err)
	}
	if n != hard {
		t.Fatalf("soft limit %d after raising, hard limit %d", n, hard)
	}
}

func hardOpenFiles() (uint64, error) {
	var lim unix.Rlimit
	err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	return lim.Max, err
}
