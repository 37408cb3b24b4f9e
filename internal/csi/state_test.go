package csi

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestStateRecordRefusesBadFiles: a record that is too large, or not a
// regular file, is refused with an error naming the file.
func TestStateRecordRefusesBadFiles(t *testing.T) {
	s := store{dir: t.TempDir()}
	big := filepath.Join(s.dir, "csi-big.json")
	if err := os.WriteFile(big, []byte(`{"version": 1}`+strings.Repeat(" ", maxRecordSize)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(s.dir, "csi-dir.json"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"csi-big.json":     "longer than " + strconv.Itoa(maxRecordSize) + " bytes",
		"csi-dir.json":     "not a regular file",
		"csi-missing.json": "no such file",
	} {
		if _, err := s.read(name); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), name) {
			t.Errorf("read(%s) = %v, want an error naming the file and saying %q", name, err, want)
		}
	}
}
