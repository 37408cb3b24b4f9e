package rotate

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Default file names of a [FileSink], as in a kubernetes.io/tls Secret.
const (
	DefaultCertFile   = "tls.crt"
	DefaultKeyFile    = "tls.key"
	DefaultBundleFile = "ca.crt"
)

// Names of the entries a [FileSink] manages inside its directory, as in the
// kubelet's atomic writer.
const (
	dataDirName    = "..data"     // symlink to the current version directory
	newDataDirName = "..data_tmp" // symlink being swapped into dataDirName
	versionLayout  = "2006_01_02_15_04_05"
	versionPrefix  = ".."
)

// File and directory modes of a [FileSink].
const (
	certMode         fs.FileMode = 0o644
	keyMode          fs.FileMode = 0o600
	keyModeWithGroup fs.FileMode = 0o640
	dirMode          fs.FileMode = 0o700
	dirModeWithGroup fs.FileMode = 0o750
)

// maxReadAttempts bounds the retries of [ReadAtomic].
const maxReadAttempts = 20

// FileSinkOptions configure a [FileSink]. Every field is optional.
type FileSinkOptions struct {
	// CertFile is the name of the chain file (leaf, then intermediates).
	// Default "tls.crt".
	CertFile string
	// KeyFile is the name of the PKCS#8 private key file. Default "tls.key".
	KeyFile string
	// BundleFile is the name of the trust bundle file. Default "ca.crt".
	BundleFile string
	// FSGroup, when set, makes the key readable by this group: the key file
	// gets mode 0640 and the directories 0750, all owned by this group, like
	// a pod's securityContext.fsGroup. Changing the group of a file needs
	// CAP_CHOWN unless the writer is a member of the group. When nil, the key
	// is 0600 and the directories 0700.
	FSGroup *int64
	// Now names the version directories; nil means time.Now. Names are made
	// unique with a random suffix, so the clock only helps humans.
	Now func() time.Time
}

// FileSink is a [Sink] that writes a credential to a directory as three PEM
// files, swapped atomically together:
//
//	<dir>/tls.crt -> ..data/tls.crt
//	<dir>/tls.key -> ..data/tls.key
//	<dir>/ca.crt  -> ..data/ca.crt
//	<dir>/..data  -> ..2025_01_02_15_04_05.123456789
//	<dir>/..2025_01_02_15_04_05.123456789/{tls.crt,tls.key,ca.crt}
//
// Each write creates a new version directory, points the ..data symlink at it
// with one rename, and removes older version directories (including ones left
// by a crash). A reader that opens one file always sees a complete file. A
// reader that needs several files of one version resolves ..data once and
// reads them from that version, or uses [ReadAtomic].
//
// Modes are set explicitly, whatever the umask: certificates 0644, key 0600
// and directories 0700 (0640 and 0750 with [FileSinkOptions.FSGroup]).
type FileSink struct {
	dir     string
	names   [3]string // cert, key, bundle
	fsGroup *int64
	now     func() time.Time

	mu sync.Mutex // serializes writes
}

// NewFileSink returns a FileSink writing into dir, which it creates if
// missing (mode 0700, or 0750 with FSGroup).
func NewFileSink(dir string, opts FileSinkOptions) (*FileSink, error) {
	if dir == "" {
		return nil, errors.New("file sink: dir: must not be empty")
	}
	s := &FileSink{
		dir:   filepath.Clean(dir),
		names: [3]string{opts.CertFile, opts.KeyFile, opts.BundleFile},
		now:   opts.Now,
	}
	if opts.FSGroup != nil {
		g := *opts.FSGroup
		if g < 0 || g > math.MaxInt32 {
			return nil, fmt.Errorf("file sink: fsGroup: must be in [0, %d], got %d", math.MaxInt32, g)
		}
		s.fsGroup = &g
	}
	for i, def := range [3]string{DefaultCertFile, DefaultKeyFile, DefaultBundleFile} {
		if s.names[i] == "" {
			s.names[i] = def
		}
	}
	fields := [3]string{"certFile", "keyFile", "bundleFile"}
	for i, n := range s.names {
		if err := checkFileName(n); err != nil {
			return nil, fmt.Errorf("file sink: %s: %w", fields[i], err)
		}
		for j := range i {
			if s.names[j] == n {
				return nil, fmt.Errorf("file sink: %s: %q is already used by %s", fields[i], n, fields[j])
			}
		}
	}
	if s.now == nil {
		s.now = time.Now
	}
	if err := s.ensureDir(); err != nil {
		return nil, err
	}
	return s, nil
}

// checkFileName accepts plain names that cannot collide with the entries the
// sink manages.
func checkFileName(n string) error {
	switch {
	case n == "." || n == "..":
		return fmt.Errorf("%q is not a file name", n)
	case strings.ContainsRune(n, '/') || strings.ContainsRune(n, 0):
		return fmt.Errorf("must be a plain file name, got %q", n)
	case strings.HasPrefix(n, ".."):
		return fmt.Errorf("must not start with \"..\" (reserved for versions), got %q", n)
	}
	return nil
}

// Dir returns the directory the sink writes into.
func (s *FileSink) Dir() string { return s.dir }

// Put writes c's chain, key and bundle as a new version and swaps it in
// atomically. Errors never contain key material.
func (s *FileSink) Put(ctx context.Context, c *Credential) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("file sink %s: %w", s.dir, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("file sink %s: %w", s.dir, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return fmt.Errorf("file sink %s: encode private key: %w", s.dir, err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	clear(keyDER)
	defer clear(keyPEM)

	files := [3][]byte{encodeCerts(c.Certificates), keyPEM, encodeCerts(c.Bundle)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.write(files); err != nil {
		return fmt.Errorf("file sink %s: %w", s.dir, err)
	}
	return nil
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func (s *FileSink) dirMode() fs.FileMode {
	if s.fsGroup != nil {
		return dirModeWithGroup
	}
	return dirMode
}

func (s *FileSink) modes() [3]fs.FileMode {
	if s.fsGroup != nil {
		return [3]fs.FileMode{certMode, keyModeWithGroup, certMode}
	}
	return [3]fs.FileMode{certMode, keyMode, certMode}
}

// ensureDir creates the target directory when it is missing and gives it the
// sink's mode and group. An existing directory is left as it is.
func (s *FileSink) ensureDir() error {
	fi, err := os.Stat(s.dir)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("file sink %s: not a directory", s.dir)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("file sink %s: %w", s.dir, err)
	}
	if err := os.MkdirAll(s.dir, s.dirMode()); err != nil {
		return fmt.Errorf("file sink %s: create directory: %w", s.dir, err)
	}
	if err := s.setMode(s.dir, s.dirMode(), true); err != nil {
		return fmt.Errorf("file sink %s: %w", s.dir, err)
	}
	return nil
}

// setMode sets mode (ignoring the umask) and, with FSGroup, the group.
func (s *FileSink) setMode(path string, mode fs.FileMode, group bool) error {
	if group && s.fsGroup != nil {
		if err := os.Lchown(path, -1, int(*s.fsGroup)); err != nil {
			return fmt.Errorf("set group of %s: %w", filepath.Base(path), err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("set mode of %s: %w", filepath.Base(path), err)
	}
	return nil
}

// write performs one atomic update, as the kubelet's atomic writer does:
//  1. create a new version directory ..<timestamp>.<random> and write the
//     files into it, synced;
//  2. point ..data_tmp at it and rename ..data_tmp over ..data (atomic);
//  3. create the user-visible symlinks <name> -> ..data/<name> if needed;
//  4. remove every other version directory and stale temporary link.
func (s *FileSink) write(files [3][]byte) error {
	if err := s.ensureDir(); err != nil {
		return err
	}
	version, err := s.newVersionDir()
	if err != nil {
		return err
	}
	versionPath := filepath.Join(s.dir, version)
	committed := false
	defer func() {
		if !committed {
			_ = os.RemoveAll(versionPath)
		}
	}()
	modes := s.modes()
	for i, name := range s.names {
		if err := s.writeFile(filepath.Join(versionPath, name), files[i], modes[i], i == 1); err != nil {
			return err
		}
	}
	if err := syncDir(versionPath); err != nil {
		return err
	}

	tmpLink := filepath.Join(s.dir, newDataDirName)
	if err := os.Remove(tmpLink); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", newDataDirName, err)
	}
	if err := os.Symlink(version, tmpLink); err != nil {
		return fmt.Errorf("link %s: %w", newDataDirName, err)
	}
	if err := os.Rename(tmpLink, filepath.Join(s.dir, dataDirName)); err != nil {
		_ = os.Remove(tmpLink)
		return fmt.Errorf("swap %s: %w", dataDirName, err)
	}
	committed = true

	for _, name := range s.names {
		if err := s.ensureUserLink(name); err != nil {
			return err
		}
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	return s.removeOldVersions(version)
}

// newVersionDir creates an empty version directory with the sink's mode.
func (s *FileSink) newVersionDir() (string, error) {
	prefix := versionPrefix + s.now().UTC().Format(versionLayout) + "."
	path, err := os.MkdirTemp(s.dir, prefix)
	if err != nil {
		return "", fmt.Errorf("create version directory: %w", err)
	}
	if err := s.setMode(path, s.dirMode(), true); err != nil {
		_ = os.RemoveAll(path)
		return "", err
	}
	return filepath.Base(path), nil
}

// writeFile creates path exclusively with mode, writes data and syncs it.
func (s *FileSink) writeFile(path string, data []byte, mode fs.FileMode, group bool) (err error) {
	name := filepath.Base(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close %s: %w", name, cerr)
		}
	}()
	if group && s.fsGroup != nil {
		if err := f.Chown(-1, int(*s.fsGroup)); err != nil {
			return fmt.Errorf("set group of %s: %w", name, err)
		}
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("set mode of %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", name, err)
	}
	return nil
}

// ensureUserLink makes <dir>/<name> a symlink to ..data/<name>, replacing
// whatever else is there (a regular file from an older layout) atomically.
func (s *FileSink) ensureUserLink(name string) error {
	want := filepath.Join(dataDirName, name)
	path := filepath.Join(s.dir, name)
	if got, err := os.Readlink(path); err == nil && got == want {
		return nil
	}
	tmp := filepath.Join(s.dir, versionPrefix+name+".tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale link for %s: %w", name, err)
	}
	if err := os.Symlink(want, tmp); err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("link %s: %w", name, err)
	}
	return nil
}

// removeOldVersions removes every version directory except keep, and stale
// temporary links; these are left behind by earlier writes or by a crash.
func (s *FileSink) removeOldVersions(keep string) error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", s.dir, err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == keep:
			continue
		case isVersionDir(name) && e.IsDir():
		case name == newDataDirName && e.Type()&fs.ModeSymlink != 0:
		case s.isTempUserLink(name) && e.Type()&fs.ModeSymlink != 0:
		default:
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove old version %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (s *FileSink) isTempUserLink(name string) bool {
	for _, n := range s.names {
		if name == versionPrefix+n+".tmp" {
			return true
		}
	}
	return false
}

// isVersionDir reports whether name has the form of a version directory:
// ..<timestamp>.<suffix>.
func isVersionDir(name string) bool {
	rest, ok := strings.CutPrefix(name, versionPrefix)
	if !ok || len(rest) < len(versionLayout)+1 || rest[len(versionLayout)] != '.' {
		return false
	}
	_, err := time.Parse(versionLayout, rest[:len(versionLayout)])
	return err == nil
}

func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", filepath.Base(path), err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", filepath.Base(path), err)
	}
	return nil
}

// ReadAtomic reads the named files of one version of a directory written by a
// [FileSink] (or by the kubelet's atomic writer), so that a chain and its key
// always match: it resolves ..data once and reads every file from that
// version directory, which is never modified once ..data points at it. When a
// swap removed that version while it read, it starts again, a few times. It
// returns the contents in the order of names.
//
// Opening <dir>/tls.crt and then <dir>/tls.key separately gives each file
// complete, but a swap between the two opens yields files of two versions.
func ReadAtomic(dir string, names ...string) ([][]byte, error) {
	for _, n := range names {
		if err := checkFileName(n); err != nil {
			return nil, fmt.Errorf("read %s: %w", dir, err)
		}
	}
	var err error
	for range maxReadAttempts {
		var out [][]byte
		if out, err = readVersion(dir, names); err == nil {
			return out, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	return nil, fmt.Errorf("read %s: %w", dir, err)
}

func readVersion(dir string, names []string) ([][]byte, error) {
	version, err := os.Readlink(filepath.Join(dir, dataDirName))
	if err != nil {
		return nil, err
	}
	if strings.ContainsRune(version, '/') {
		return nil, fmt.Errorf("%s points outside the directory: %q", dataDirName, version)
	}
	out := make([][]byte, len(names))
	for i, n := range names {
		if out[i], err = os.ReadFile(filepath.Join(dir, version, n)); err != nil {
			return nil, err
		}
	}
	return out, nil
}
