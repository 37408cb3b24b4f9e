package csi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// recordVersion is the format version of a state file.
const recordVersion = 1

// maxRecordSize bounds a state file; records are a few hundred bytes.
const maxRecordSize = 64 << 10

// stateFile is the on-disk form of a record.
type stateFile struct {
	Version int `json:"version"`
	record
}

// store keeps one JSON file (0600) per published volume in a directory
// (0700), named <volume_id>.json, written atomically.
type store struct{ dir string }

func (s store) path(volumeID string) string { return filepath.Join(s.dir, volumeID+".json") }

func (s store) ensureDir() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("state directory %s: %w", s.dir, err)
	}
	if err := os.Chmod(s.dir, 0o700); err != nil { //nolint:gosec // a directory needs its x bit; 0700 is owner-only
		return fmt.Errorf("state directory %s: %w", s.dir, err)
	}
	return nil
}

// save writes rec atomically, so a crash leaves the old or the new file; the
// temporary file starts with a dot, which load skips.
func (s store) save(rec *record) error {
	data, err := json.MarshalIndent(stateFile{Version: recordVersion, record: *rec}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state of volume %s: %w", rec.VolumeID, err)
	}
	if err := s.ensureDir(); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.path(rec.VolumeID), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save state of volume %s: %w", rec.VolumeID, err)
	}
	return nil
}

func (s store) remove(volumeID string) error {
	if err := os.Remove(s.path(volumeID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove state of volume %s: %w", volumeID, err)
	}
	return nil
}

// load reads every record. A file that cannot be read or parsed is reported
// in bad and skipped; err is set only when the directory cannot be listed.
func (s store) load() (recs []*record, bad []error, err error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("state directory %s: %w", s.dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		rec, err := s.read(name)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		recs = append(recs, rec)
	}
	return recs, bad, nil
}

func (s store) read(name string) (*record, error) {
	path := filepath.Join(s.dir, name)
	raw, err := readlimit.File(path, maxRecordSize)
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err) // err names the file
	}
	var sf stateFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sf); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	if sf.Version != recordVersion {
		return nil, fmt.Errorf("state file %s: version %d, want %d", path, sf.Version, recordVersion)
	}
	rec := sf.record
	if err := checkVolumeID(rec.VolumeID); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	if name != rec.VolumeID+".json" {
		return nil, fmt.Errorf("state file %s: holds volume %s", path, rec.VolumeID)
	}
	if _, err := checkTargetPath(rec.TargetPath); err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	switch rec.Mode {
	case ModeFiles:
		for _, n := range [][2]string{{attrCertFile, rec.Files.CertFile}, {attrKeyFile, rec.Files.KeyFile}, {attrBundleFile, rec.Files.BundleFile}} {
			if err := checkFileName(n[0], n[1]); err != nil {
				return nil, fmt.Errorf("state file %s: %w", path, err)
			}
		}
		if aud := rec.Files.JWTAudience; aud != nil {
			if err := checkJWTAudience(aud); err != nil {
				return nil, fmt.Errorf("state file %s: %w", path, err)
			}
		}
	case ModeSocket:
	default:
		return nil, fmt.Errorf("state file %s: unknown mode %q", path, rec.Mode)
	}
	return &rec, nil
}
