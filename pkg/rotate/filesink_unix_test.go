//go:build unix

package rotate

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestFileSinkModes runs without t.Parallel: the umask is per process.
func TestFileSinkModes(t *testing.T) {
	gid := int64(os.Getgid())
	tests := []struct {
		name     string
		umask    int
		fsGroup  *int64
		key, dir fs.FileMode
	}{
		{"private_with_umask_0", 0, nil, 0o600, 0o700},
		{"private_with_umask_077", 0o077, nil, 0o600, 0o700},
		{"group_readable_key_with_fs_group_and_umask_0", 0, &gid, 0o640, 0o750},
		{"group_readable_key_with_fs_group_and_umask_077", 0o077, &gid, 0o640, 0o750},
	}
	ca := newTestCA(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := syscall.Umask(tt.umask)
			defer syscall.Umask(old)

			dir := filepath.Join(t.TempDir(), "new")
			s, err := NewFileSink(dir, FileSinkOptions{FSGroup: tt.fsGroup})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Put(context.Background(), ca.issue(t, time.Now(), time.Now().Add(time.Hour))); err != nil {
				t.Fatal(err)
			}
			version, err := os.Readlink(filepath.Join(dir, "..data"))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]fs.FileMode{
				dir:                           tt.dir,
				filepath.Join(dir, version):   tt.dir,
				filepath.Join(dir, "tls.crt"): 0o644,
				filepath.Join(dir, "ca.crt"):  0o644,
				filepath.Join(dir, "tls.key"): tt.key,
			}
			for path, m := range want {
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != m {
					t.Errorf("%s: mode %v, want %v", filepath.Base(path), got, m)
				}
				if tt.fsGroup != nil && (path == filepath.Join(dir, "tls.key") || m.IsDir() || fi.IsDir()) {
					if st, ok := fi.Sys().(*syscall.Stat_t); ok && int64(st.Gid) != *tt.fsGroup {
						t.Errorf("%s: group %d, want %d", filepath.Base(path), st.Gid, *tt.fsGroup)
					}
				}
			}
		})
	}
}
