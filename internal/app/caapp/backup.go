package caapp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// A backup file holds the whole CA state (every key) as one JSON document,
// written with mode 0600 and never over an existing file. docs/upgrade.md
// says where to keep it: it is as sensitive as the root key.
const (
	backupKind    = "MayflyCABackup"
	backupVersion = 1
	// maxBackupSize bounds what ca restore reads (a state is a few KiB).
	maxBackupSize = 1 << 20
)

// ErrStateExists refuses ca restore over existing state without --force.
var ErrStateExists = errors.New("the store already holds CA state")

type backupFile struct {
	Kind        string            `json:"kind"`
	Version     int               `json:"version"`
	CreatedAt   time.Time         `json:"createdAt"`
	Source      string            `json:"source"`
	TrustDomain string            `json:"trustDomain"`
	Generation  int64             `json:"generation"`
	Data        map[string][]byte `json:"data"`
}

// cmdBackup is ca backup: copy the stored CA state into a new 0600 file.
func cmdBackup(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewConfigFlags("ca backup", "CA", stderr)
	out := fs.String("out", "", "the backup file to create (mode 0600; an existing file is never overwritten)")
	cfg, store, err := storeTarget(fs, args, out, "--out is required")
	if err != nil {
		return err
	}
	b, err := Backup(context.Background(), cfg, store, *out, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Backed up the CA state of %s (generation %d) to %s (mode 0600). It holds every CA key: keep it where the root key may be.\n", b.Source, b.Generation, *out)
	return nil
}

// cmdRestore is ca restore: write a backup into the store cfg names.
func cmdRestore(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewConfigFlags("ca restore", "CA", stderr)
	in := fs.String("in", "", "the backup file written by ca backup (must not be readable by group or others)")
	force := fs.Bool("force", false, "replace the state the store holds (its keys are lost unless backed up)")
	cfg, store, err := storeTarget(fs, args, in, "--in is required")
	if err != nil {
		return err
	}
	b, err := Restore(context.Background(), cfg, store, *in, *force)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Restored the CA state backed up from %s at %s (generation %d) into %s. Start (or restart) the CA replicas.\n",
		b.Source, b.CreatedAt.UTC().Format(time.RFC3339), b.Generation, store.Describe())
	return nil
}

// Backup writes the state in store to a new file at path (mode 0600). The
// state must decode (a corrupt or too new state is not worth a backup).
func Backup(ctx context.Context, cfg *Config, store authority.Store, path string, now time.Time) (*backupFile, error) {
	snap, err := store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the CA state from %s: %w", store.Describe(), err)
	}
	s, err := authority.Decode(snap.Data)
	if err != nil {
		return nil, fmt.Errorf("the CA state in %s: %w", store.Describe(), err)
	}
	data, err := s.Encode() // in the current format
	if err != nil {
		return nil, err
	}
	b := &backupFile{
		Kind: backupKind, Version: backupVersion, CreatedAt: now.UTC(), Source: store.Describe(),
		TrustDomain: cfg.TrustDomain.String(), Generation: s.Generation, Data: data,
	}
	raw, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating backup file: %w", err)
	}
	if _, err := f.Write(raw); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	return b, nil
}

// Restore writes the backup at path into store: into an empty store, or
// over existing state with force. The backup must be of cfg's trust domain
// and decode; it is written in the current state format.
func Restore(ctx context.Context, cfg *Config, store authority.Store, path string, force bool) (*backupFile, error) {
	b, err := readBackup(path)
	if err != nil {
		return nil, err
	}
	if b.TrustDomain != cfg.TrustDomain.String() {
		return nil, fmt.Errorf("%s: trust domain %q, the configuration's is %q: restore it with a configuration of the same trust domain", path, b.TrustDomain, cfg.TrustDomain)
	}
	s, err := authority.Decode(b.Data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	a, err := s.SigningAuthority()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if td, ok := a.TrustDomain(); ok && td != cfg.TrustDomain {
		return nil, fmt.Errorf("%s: its intermediate signs for trust domain %q, the configuration's is %q", path, td, cfg.TrustDomain)
	}
	data, err := s.Encode()
	if err != nil {
		return nil, err
	}
	version := ""
	snap, err := store.Load(ctx)
	switch {
	case errors.Is(err, authority.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", store.Describe(), err)
	case !force:
		return nil, fmt.Errorf("%w: %s; restoring replaces its keys: back it up first (ca backup), stop the CA, and run ca restore --force", ErrStateExists, store.Describe())
	default:
		version = snap.Version
	}
	if _, err := store.Save(ctx, data, version); err != nil {
		return nil, fmt.Errorf("writing %s: %w", store.Describe(), err)
	}
	return b, nil
}

func readBackup(path string) (*backupFile, error) {
	raw, err := readlimit.FileCheck(path, maxBackupSize, func(fi os.FileInfo) error {
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return fmt.Errorf("%s: mode %04o lets group or others read the CA keys: chmod 600 it (and check who read it)", path, perm)
		}
		return nil
	})
	if errors.Is(err, readlimit.ErrTooLarge) {
		return nil, fmt.Errorf("%w: not a backup of ca backup", err)
	}
	if err != nil {
		return nil, fmt.Errorf("opening backup file: %w", err)
	}
	var b backupFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("%s: not a backup of ca backup: %w", path, err)
	}
	switch {
	case b.Kind != backupKind:
		return nil, fmt.Errorf("%s: kind %q, want %s", path, b.Kind, backupKind)
	case b.Version != backupVersion:
		return nil, fmt.Errorf("%s: backup version %d, this CA reads %d", path, b.Version, backupVersion)
	case len(b.Data) == 0:
		return nil, fmt.Errorf("%s: data is empty", path)
	}
	return &b, nil
}
