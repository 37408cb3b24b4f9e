package rotate

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"sync"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Default file names of a [FileSink], as in a kubernetes.io/tls Secret.
const (
	DefaultCertFile   = "tls.crt"
	DefaultKeyFile    = "tls.key"
	DefaultBundleFile = "ca.crt"
)

// File modes of a [FileSink].
const (
	certMode         fs.FileMode = 0o644
	keyMode          fs.FileMode = 0o600
	keyModeWithGroup fs.FileMode = 0o640
)

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
// files, swapped atomically together by an [atomicfile.Dir]:
//
//	<dir>/tls.crt -> ..data/tls.crt
//	<dir>/tls.key -> ..data/tls.key
//	<dir>/ca.crt  -> ..data/ca.crt
//	<dir>/..data  -> ..2025_01_02_15_04_05.123456789
//	<dir>/..2025_01_02_15_04_05.123456789/{tls.crt,tls.key,ca.crt}
//
// A write that would change nothing is skipped. A reader that needs several
// files of one version uses [atomicfile.ReadAtomic].
//
// Modes are set explicitly, whatever the umask: certificates 0644, key 0600
// and directories 0700 (0640 and 0750 with [FileSinkOptions.FSGroup]).
type FileSink struct {
	out                           *atomicfile.Dir
	certFile, keyFile, bundleFile string
	keyMode                       fs.FileMode

	mu sync.Mutex // serializes Put and PutBundle, which reads then writes
}

// NewFileSink returns a FileSink writing into dir, which it creates if
// missing (mode 0700, or 0750 with FSGroup).
func NewFileSink(dir string, opts FileSinkOptions) (*FileSink, error) {
	if dir == "" {
		return nil, errors.New("file sink: dir: must not be empty")
	}
	s := &FileSink{
		certFile:   cmp.Or(opts.CertFile, DefaultCertFile),
		keyFile:    cmp.Or(opts.KeyFile, DefaultKeyFile),
		bundleFile: cmp.Or(opts.BundleFile, DefaultBundleFile),
		keyMode:    keyMode,
	}
	if g := opts.FSGroup; g != nil {
		if *g < 0 || *g > math.MaxInt32 {
			return nil, fmt.Errorf("file sink: fsGroup: must be in [0, %d], got %d", math.MaxInt32, *g)
		}
		s.keyMode = keyModeWithGroup
	}
	fields := []struct{ field, name string }{{"certFile", s.certFile}, {"keyFile", s.keyFile}, {"bundleFile", s.bundleFile}}
	for i, f := range fields {
		if err := atomicfile.CheckName(f.name); err != nil {
			return nil, fmt.Errorf("file sink: %s: %w", f.field, err)
		}
		for _, prev := range fields[:i] {
			if prev.name == f.name {
				return nil, fmt.Errorf("file sink: %s: %q is already used by %s", f.field, f.name, prev.field)
			}
		}
	}
	out, err := atomicfile.NewDir(dir, atomicfile.DirOptions{Group: opts.FSGroup, Now: opts.Now})
	if err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	s.out = out
	return s, nil
}

// Dir returns the directory the sink writes into.
func (s *FileSink) Dir() string { return s.out.Path() }

// files maps a credential's encoded parts to the sink's named files.
func (s *FileSink) files(chain, key, bundle []byte) []atomicfile.File {
	return []atomicfile.File{
		{Name: s.certFile, Data: chain, Mode: certMode},
		{Name: s.keyFile, Data: key, Mode: s.keyMode, Group: true},
		{Name: s.bundleFile, Data: bundle, Mode: certMode},
	}
}

// Put writes c's chain, key and bundle as a new version and swaps it in
// atomically; when the files already hold exactly that, it leaves them
// alone. Errors never contain key material.
func (s *FileSink) Put(ctx context.Context, c *Credential) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("file sink %s: %w", s.Dir(), err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("file sink %s: %w", s.Dir(), err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return fmt.Errorf("file sink %s: encode private key: %w", s.Dir(), err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	clear(keyDER)
	defer clear(keyPEM)

	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.out.Write(s.files(pki.EncodeCertificates(c.Certificates...), keyPEM, pki.EncodeCertificates(c.Bundle...))); err != nil {
		return fmt.Errorf("file sink: %w", err)
	}
	return nil
}

// PutBundle replaces the bundle file, keeping the chain and key of the
// current version: the new version holds them byte for byte, so a reader
// still sees a chain with its key. Trust bundle changes thus reach the files
// without waiting for the next leaf rotation. Nothing is written when the
// bundle is unchanged; an error wrapping fs.ErrNotExist means no credential
// was written yet.
func (s *FileSink) PutBundle(ctx context.Context, bundle []*x509.Certificate) error {
	for i, c := range bundle {
		if c == nil {
			return fmt.Errorf("file sink %s: %w: bundle[%d] is nil", s.Dir(), ErrInvalidCredential, i)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("file sink %s: %w", s.Dir(), err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.out.Read(s.certFile, s.keyFile)
	if err != nil {
		return fmt.Errorf("file sink: current certificate and key: %w", err)
	}
	defer clear(cur[1])
	if _, err := s.out.Write(s.files(cur[0], cur[1], pki.EncodeCertificates(bundle...))); err != nil {
		return fmt.Errorf("file sink: %w", err)
	}
	return nil
}
