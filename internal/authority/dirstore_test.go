package authority_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

func newDirStore(t *testing.T) *authority.DirStore {
	t.Helper()
	s, err := authority.NewDirStore(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatalf("NewDirStore: %v", err)
	}
	return s
}

func TestDirStoreModesIgnoreUmask(t *testing.T) {
	// Umask is process-wide: this test must not run in parallel.
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })

	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		{name: "new directory", setup: func(*testing.T, string) {}},
		{name: "existing world-readable directory", setup: func(t *testing.T, dir string) {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state", "ca")
			tt.setup(t, dir)
			s, err := authority.NewDirStore(dir)
			if err != nil {
				t.Fatalf("NewDirStore: %v", err)
			}
			if _, err := s.Save(context.Background(), map[string][]byte{"a": []byte("b")}, ""); err != nil {
				t.Fatalf("Save: %v", err)
			}
			for _, c := range []struct {
				path string
				want fs.FileMode
			}{
				{dir, 0o700},
				{filepath.Join(dir, authority.StateFileName), 0o600},
				{filepath.Join(dir, ".lock"), 0o600},
			} {
				st, err := os.Stat(c.path)
				if err != nil {
					t.Fatal(err)
				}
				if got := st.Mode().Perm(); got != c.want {
					t.Errorf("%s has mode %v, want %v", c.path, got, c.want)
				}
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if strings.Contains(e.Name(), ".tmp") {
					t.Errorf("temporary file %s left behind", e.Name())
				}
			}
		})
	}
}

func TestDirStoreLoadEmptyIsNotFound(t *testing.T) {
	s := newDirStore(t)
	if _, err := s.Load(context.Background()); !errors.Is(err, authority.ErrNotFound) {
		t.Fatalf("Load on an empty directory = %v, want ErrNotFound", err)
	}
}

func TestDirStoreCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	s := newDirStore(t)
	d1 := map[string][]byte{"k": []byte("1")}
	d2 := map[string][]byte{"k": []byte("2")}
	d3 := map[string][]byte{"k": []byte("3")}

	if _, err := s.Save(ctx, d1, "stale"); !errors.Is(err, authority.ErrConflict) {
		t.Fatalf("Save with a version before the file exists = %v, want ErrConflict", err)
	}
	v1, err := s.Save(ctx, d1, "")
	if err != nil {
		t.Fatalf("first Save: %v", err)
	}
	if _, err := s.Save(ctx, d2, ""); !errors.Is(err, authority.ErrConflict) {
		t.Fatalf("second create = %v, want ErrConflict", err)
	}
	v2, err := s.Save(ctx, d2, v1)
	if err != nil {
		t.Fatalf("Save at the current version: %v", err)
	}
	if v2 == v1 {
		t.Fatal("version did not change with the content")
	}
	if _, err := s.Save(ctx, d3, v1); !errors.Is(err, authority.ErrConflict) {
		t.Fatalf("Save with a stale version = %v, want ErrConflict", err)
	}
	snap, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Version != v2 || !reflect.DeepEqual(snap.Data, d2) {
		t.Fatalf("Load = %v at %s, want %v at %s", snap.Data, snap.Version, d2, v2)
	}
	if err := os.Remove(s.Describe()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Save(ctx, d3, v2); !errors.Is(err, authority.ErrConflict) {
		t.Fatalf("Save after the file was removed = %v, want ErrConflict", err)
	}
}

func TestDirStoreConcurrentSavesExactlyOneWins(t *testing.T) {
	ctx := context.Background()
	for _, base := range []string{"create", "update"} {
		t.Run(base, func(t *testing.T) {
			s := newDirStore(t)
			prev := ""
			if base == "update" {
				v, err := s.Save(ctx, map[string][]byte{"k": []byte("base")}, "")
				if err != nil {
					t.Fatal(err)
				}
				prev = v
			}
			const n = 16
			var wg sync.WaitGroup
			errs := make([]error, n)
			versions := make([]string, n)
			for i := range n {
				wg.Go(func() {
					// Each writer opens its own store, as a second process would.
					st, err := authority.NewDirStore(s.Dir())
					if err != nil {
						errs[i] = err
						return
					}
					versions[i], errs[i] = st.Save(ctx, map[string][]byte{"k": fmt.Appendf(nil, "writer %d", i)}, prev)
				})
			}
			wg.Wait()
			winner := -1
			for i, err := range errs {
				switch {
				case err == nil && winner >= 0:
					t.Fatalf("writers %d and %d both won", winner, i)
				case err == nil:
					winner = i
				case !errors.Is(err, authority.ErrConflict):
					t.Fatalf("writer %d: %v, want ErrConflict", i, err)
				}
			}
			if winner < 0 {
				t.Fatal("no writer won")
			}
			snap, err := s.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := fmt.Sprintf("writer %d", winner); string(snap.Data["k"]) != want || snap.Version != versions[winner] {
				t.Fatalf("stored %q at %s, want %q at %s", snap.Data["k"], snap.Version, want, versions[winner])
			}
		})
	}
}

func TestDirStoreRefusesBadFiles(t *testing.T) {
	tests := []struct {
		name      string
		content   []byte
		mode      os.FileMode
		wantIs    error
		wantInMsg string
	}{
		{name: "file readable by others", content: []byte("{}"), mode: 0o644, wantInMsg: "chmod 600"},
		{name: "file writable by group", content: []byte("{}"), mode: 0o620, wantInMsg: "chmod 600"},
		{name: "file above 4 MiB", content: make([]byte, 4<<20+1), mode: 0o600, wantIs: authority.ErrCorrupt, wantInMsg: "bytes"},
		{name: "invalid JSON", content: []byte(`{"root.crt": `), mode: 0o600, wantIs: authority.ErrCorrupt, wantInMsg: "JSON"},
		{name: "values that are not base64", content: []byte(`{"root.crt": "%%%"}`), mode: 0o600, wantIs: authority.ErrCorrupt, wantInMsg: "JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newDirStore(t)
			if err := os.WriteFile(s.Describe(), tt.content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(s.Describe(), tt.mode); err != nil {
				t.Fatal(err)
			}
			_, err := s.Load(context.Background())
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if errors.Is(err, authority.ErrNotFound) {
				t.Fatalf("Load = %v: a refused file must not look like a first start", err)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Load = %v, want it to wrap %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantInMsg) || !strings.Contains(err.Error(), s.Describe()) {
				t.Errorf("Load = %q, want it to name the file and say %q", err, tt.wantInMsg)
			}
			if _, err := s.Save(context.Background(), map[string][]byte{"k": nil}, ""); err == nil {
				t.Error("Save over a refused file succeeded")
			}
		})
	}
}
