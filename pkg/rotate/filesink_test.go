package rotate

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// parsePair parses a chain and a PKCS#8 key and reports whether they match.
func parsePair(t testing.TB, certPEM, keyPEM []byte) (leaf *x509.Certificate, match bool, err error) {
	t.Helper()
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, false, errors.New("no CERTIFICATE block")
	}
	leaf, err = x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, false, err
	}
	kb, rest := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, false, errors.New("want exactly one PRIVATE KEY block")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, false, err
	}
	pub := key.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool })
	return leaf, pub.Equal(leaf.PublicKey), nil
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func versionDirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if isVersionDir(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestFileSinkWritesLayout(t *testing.T) {
	ca := newTestCA(t)
	dir := filepath.Join(t.TempDir(), "a", "b", "certs")
	s, err := NewFileSink(dir, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := mode(t, dir); got != 0o700 {
		t.Errorf("created target dir mode = %v, want 0700", got)
	}
	cred := ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	if err := s.Put(context.Background(), cred); err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		target, err := os.Readlink(filepath.Join(dir, name))
		if err != nil || target != filepath.Join("..data", name) {
			t.Errorf("%s: link %q, %v; want a symlink to ..data/%s", name, target, err, name)
		}
	}
	data, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil || !isVersionDir(data) {
		t.Fatalf("..data -> %q, %v; want a version directory", data, err)
	}
	files, err := ReadAtomic(dir, "tls.crt", "tls.key", "ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	leaf, match, err := parsePair(t, files[0], files[1])
	if err != nil || !match || !leaf.Equal(cred.Certificates[0]) {
		t.Fatalf("tls.crt/tls.key: match %v, err %v", match, err)
	}
	if want := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}); !bytes.Equal(files[2], want) {
		t.Error("ca.crt does not hold the bundle")
	}
}

func TestFileSinkWritesChainLeafFirst(t *testing.T) {
	ca := newTestCA(t)
	cred := ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	cred.Certificates = append(cred.Certificates, ca.cert) // as an intermediate
	dir := t.TempDir()
	s, err := NewFileSink(dir, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), cred); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "tls.crt"))
	if err != nil {
		t.Fatal(err)
	}
	var got []*x509.Certificate
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	if len(got) != 2 || !got[0].Equal(cred.Certificates[0]) || !got[1].Equal(ca.cert) {
		t.Fatalf("tls.crt holds %d certificates, want leaf then intermediate", len(got))
	}
}

func TestFileSinkCustomNames(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	s, err := NewFileSink(dir, FileSinkOptions{CertFile: "svid.pem", KeyFile: "svid_key.pem", BundleFile: "bundle.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), ca.issue(t, time.Now(), time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"svid.pem", "svid_key.pem", "bundle.pem"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "tls.crt")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("default name written too: %v", err)
	}
}

func TestNewFileSinkRejectsBadOptions(t *testing.T) {
	neg := int64(-1)
	tests := []struct {
		name    string
		opts    FileSinkOptions
		wantErr string
	}{
		{"rejects_path_in_name", FileSinkOptions{CertFile: "../x"}, "certFile: must be a plain file name"},
		{"rejects_reserved_prefix", FileSinkOptions{KeyFile: "..data"}, "keyFile: must not start with"},
		{"rejects_duplicate_names", FileSinkOptions{BundleFile: "tls.crt"}, "bundleFile: \"tls.crt\" is already used by certFile"},
		{"rejects_negative_group", FileSinkOptions{FSGroup: &neg}, "fsGroup:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewFileSink(t.TempDir(), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("NewFileSink() = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
	t.Run("rejects_file_as_dir", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewFileSink(f, FileSinkOptions{}); err == nil {
			t.Fatal("NewFileSink(file) = nil error")
		}
	})
}

func TestFileSinkRejectsMismatchedKeyWithoutLeakingIt(t *testing.T) {
	ca := newTestCA(t)
	a, b := ca.issue(t, time.Now(), time.Now().Add(time.Hour)), ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	a.Key = b.Key
	dir := t.TempDir()
	s, err := NewFileSink(dir, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Put(context.Background(), a)
	if !errors.Is(err, ErrInvalidCredential) {
		t.Fatalf("Put() = %v, want ErrInvalidCredential", err)
	}
	if strings.Contains(err.Error(), "PRIVATE KEY") || len(err.Error()) > 300 {
		t.Errorf("error may carry key material: %q", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("rejected credential left %d entries", len(entries))
	}
}

func TestFileSinkRemovesOldAndStaleVersions(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	// Leftovers of a crashed writer, and files that are not ours.
	stale := filepath.Join(dir, "..2020_01_01_00_00_00.12345")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "tls.key"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, link := range []string{"..data_tmp", "..tls.crt.tmp"} {
		if err := os.Symlink(filepath.Base(stale), filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, keep := range []string{"..keep", "README"} {
		if err := os.WriteFile(filepath.Join(dir, keep), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A regular file from an older layout is replaced by the symlink.
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}

	s, err := NewFileSink(dir, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := s.Put(context.Background(), ca.issue(t, time.Now(), time.Now().Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
		current, err := os.Readlink(filepath.Join(dir, "..data"))
		if err != nil {
			t.Fatal(err)
		}
		if got := versionDirs(t, dir); len(got) != 1 || got[0] != current {
			t.Fatalf("version dirs = %v, want only the current %s", got, current)
		}
	}
	for _, gone := range []string{"..data_tmp", "..tls.crt.tmp"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind: %v", gone, err)
		}
	}
	for _, keep := range []string{"..keep", "README"} {
		if _, err := os.Stat(filepath.Join(dir, keep)); err != nil {
			t.Errorf("%s removed: %v", keep, err)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "tls.crt")); err != nil || target != "..data/tls.crt" {
		t.Errorf("tls.crt -> %q, %v; want ..data/tls.crt", target, err)
	}
}

func TestFileSinkRecreatesDeletedDir(t *testing.T) {
	ca := newTestCA(t)
	dir := filepath.Join(t.TempDir(), "certs")
	s, err := NewFileSink(dir, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), ca.issue(t, time.Now(), time.Now().Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAtomic(dir, "tls.crt", "tls.key"); err != nil {
		t.Fatal(err)
	}
}

// TestFileSinkReadersNeverSeeMismatchedPair swaps 50 credentials while
// readers read the directory in a loop: a reader of one version (ReadAtomic)
// always gets a cert and key that match; a reader opening the user-visible
// symlinks one by one always gets complete files.
func TestFileSinkReadersNeverSeeMismatchedPair(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	s, err := NewFileSink(dir, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	creds := make([]*Credential, 50)
	for i := range creds {
		creds[i] = ca.issue(t, time.Now(), time.Now().Add(time.Hour))
	}
	if err := s.Put(context.Background(), creds[0]); err != nil {
		t.Fatal(err)
	}

	var (
		stop      atomic.Bool
		wg        sync.WaitGroup
		pairReads atomic.Int64
		fileReads atomic.Int64
	)
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { // pair reader
		defer wg.Done()
		for !stop.Load() {
			files, err := ReadAtomic(dir, "tls.crt", "tls.key")
			if err != nil {
				errs <- err
				return
			}
			if _, match, err := parsePair(t, files[0], files[1]); err != nil || !match {
				errs <- errors.New("ReadAtomic returned a mismatched or broken pair")
				return
			}
			pairReads.Add(1)
		}
	}()
	go func() { // per-file reader through the user-visible symlinks
		defer wg.Done()
		for !stop.Load() {
			for _, name := range []string{"tls.crt", "tls.key"} {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if errors.Is(err, fs.ErrNotExist) {
					continue // resolved a version just removed: the reader retries
				}
				if err != nil {
					errs <- err
					return
				}
				blk, _ := pem.Decode(b)
				if blk == nil || !bytes.HasSuffix(b, []byte("-----\n")) {
					errs <- errors.New(name + " read incomplete")
					return
				}
				fileReads.Add(1)
			}
		}
	}()
	for _, c := range creds[1:] {
		if err := s.Put(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if pairReads.Load() == 0 || fileReads.Load() == 0 {
		t.Fatalf("readers did not run (%d pair reads, %d file reads)", pairReads.Load(), fileReads.Load())
	}
	files, err := ReadAtomic(dir, "tls.crt", "tls.key")
	if err != nil {
		t.Fatal(err)
	}
	if leaf, match, err := parsePair(t, files[0], files[1]); err != nil || !match || !leaf.Equal(creds[49].Certificates[0]) {
		t.Errorf("last write is not the one on disk (match %v, err %v)", match, err)
	}
}

func TestReadAtomicRejectsBadNames(t *testing.T) {
	if _, err := ReadAtomic(t.TempDir(), "../etc/passwd"); err == nil {
		t.Fatal("ReadAtomic(../etc/passwd) = nil error")
	}
	if _, err := ReadAtomic(t.TempDir(), "tls.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadAtomic(empty dir) = %v, want ErrNotExist", err)
	}
}

// TestFileSinkAsRotatorSink wires a FileSink into a Rotator on a fake clock.
func TestFileSinkAsRotatorSink(t *testing.T) {
	dir := t.TempDir()
	s, err := NewFileSink(dir, FileSinkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, Options{Sinks: []Sink{s}})
	h.start()
	h.idle()
	for range 3 {
		h.advanceToWake()
		files, err := ReadAtomic(dir, "tls.crt", "tls.key")
		if err != nil {
			t.Fatal(err)
		}
		leaf, match, err := parsePair(t, files[0], files[1])
		if err != nil || !match || !leaf.Equal(h.r.Current().Certificates[0]) {
			t.Fatalf("files do not hold the current credential (match %v, err %v)", match, err)
		}
	}
	if st := h.r.State(); st.PendingSinks != 0 || st.SinkFailures != 0 {
		t.Fatalf("state = %+v", st)
	}
}
