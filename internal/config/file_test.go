package config_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/config"
)

func parseString(raw []byte) (string, error) { return string(raw), nil }

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	limit := strconv.Itoa(config.MaxFileSize)

	t.Run("reads a file at the limit", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(dir, "max.yaml")
		if err := os.WriteFile(path, []byte(strings.Repeat("#", config.MaxFileSize)), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := config.Load(path, "test config", parseString)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != config.MaxFileSize {
			t.Fatalf("read %d bytes, want %d", len(got), config.MaxFileSize)
		}
	})
	t.Run("refuses a big sparse file naming it and the limit", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(dir, "big.yaml")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		// Sparse: 10 MiB of size, no data blocks written.
		if err := f.Truncate(10 << 20); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		_, err = config.Load(path, "test config", parseString)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), limit) {
			t.Fatalf("err = %v, want one naming %s and the limit %s", err, path, limit)
		}
	})
	t.Run("one byte over the limit", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(dir, "over.yaml")
		if err := os.WriteFile(path, []byte(strings.Repeat("#", config.MaxFileSize+1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := config.Load(path, "test config", parseString); err == nil || !strings.Contains(err.Error(), limit) {
			t.Fatalf("err = %v, want the size limit", err)
		}
	})
	t.Run("an endless device is refused, not read to the end", func(t *testing.T) {
		t.Parallel()
		if _, err := os.Stat("/dev/zero"); err != nil {
			t.Skipf("no /dev/zero on this system: %v", err)
		}
		if _, err := config.Load("/dev/zero", "test config", parseString); err == nil || !strings.Contains(err.Error(), "/dev/zero") {
			t.Fatalf("err = %v, want the size limit naming /dev/zero", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(dir, "missing.yaml")
		if _, err := config.Load(path, "test config", parseString); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
			t.Fatalf("err = %v, want one naming the file", err)
		}
	})
}
