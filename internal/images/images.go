// Package images builds mayfly's OCI images from static binaries without a
// container engine: one layer holding the binaries (and /etc/passwd, /etc/group
// naming the image's user) on an empty base, with every timestamp fixed so
// that the same binaries always give the same image digest.
package images

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Spec describes one image for one platform.
type Spec struct {
	// Files maps a path in the image (absolute, e.g. /usr/local/bin/ca) to
	// its content; each is written 0755 owned by root.
	Files map[string][]byte
	// Entrypoint is the command, e.g. ["/usr/local/bin/ca"].
	Entrypoint []string
	// UID and GID the image runs as; 0 only where the component needs root.
	UID, GID int
	// OS and Arch of the binaries, e.g. linux and arm64.
	OS, Arch string
	// Created is the fixed time of every file and of the image config
	// (the source's commit time), for reproducible digests.
	Created time.Time
	// Labels are the image config's labels (org.opencontainers.image.*).
	Labels map[string]string
}

// Build returns the image described by spec.
func Build(spec Spec) (v1.Image, error) {
	if err := spec.check(); err != nil {
		return nil, err
	}
	layerTar, err := spec.layer()
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: v1.Time{Time: spec.Created}, CreatedBy: "mayfly images"},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = spec.OS, spec.Arch
	cf.Created = v1.Time{Time: spec.Created}
	cf.Config.Entrypoint = spec.Entrypoint
	cf.Config.User = fmt.Sprintf("%d:%d", spec.UID, spec.GID)
	cf.Config.Labels = spec.Labels
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	cf.Config.WorkingDir = "/"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return mutate.CreatedAt(img, v1.Time{Time: spec.Created})
}

func (s Spec) check() error {
	var errs []error
	if len(s.Files) == 0 {
		errs = append(errs, errors.New("no files"))
	}
	for p := range s.Files {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			errs = append(errs, fmt.Errorf("file path %q: want a clean absolute path", p))
		}
		if strings.HasPrefix(p, "/etc/passwd") || strings.HasPrefix(p, "/etc/group") {
			errs = append(errs, fmt.Errorf("file path %q: written by the builder", p))
		}
	}
	if len(s.Entrypoint) == 0 {
		errs = append(errs, errors.New("no entrypoint"))
	} else if _, ok := s.Files[s.Entrypoint[0]]; !ok {
		errs = append(errs, fmt.Errorf("entrypoint %q is not one of the files", s.Entrypoint[0]))
	}
	if s.UID < 0 || s.GID < 0 {
		errs = append(errs, fmt.Errorf("uid %d / gid %d: must not be negative", s.UID, s.GID))
	}
	if s.OS == "" || s.Arch == "" {
		errs = append(errs, errors.New("OS and Arch are required"))
	}
	if s.Created.IsZero() {
		errs = append(errs, errors.New("created time is required (reproducible builds)"))
	}
	return errors.Join(errs...)
}

// layer writes the files, their parent directories, /etc/passwd and
// /etc/group in sorted order with the fixed time.
func (s Spec) layer() ([]byte, error) {
	files := map[string][]byte{}
	for p, b := range s.Files {
		files[p] = b
	}
	user := "nonroot"
	if s.UID == 0 {
		user = "root"
	}
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n" //nolint:gosec // an /etc/passwd without passwords
	group := "root:x:0:\n"
	if s.UID != 0 {
		passwd += fmt.Sprintf("%s:x:%d:%d:%s:/home/%s:/sbin/nologin\n", user, s.UID, s.GID, user, user)
		group += fmt.Sprintf("%s:x:%d:\n", user, s.GID)
	}
	files["/etc/passwd"] = []byte(passwd)
	files["/etc/group"] = []byte(group)

	dirs := map[string]bool{"tmp": true}
	var names []string
	for p := range files {
		rel := strings.TrimPrefix(p, "/")
		names = append(names, rel)
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var dirNames []string
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	sort.Strings(dirNames)
	sort.Strings(names)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirNames {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: s.Created, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	for _, n := range names {
		b := files["/"+n]
		mode := int64(0o755)
		if strings.HasPrefix(n, "etc/") {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: mode, Size: int64(len(b)), ModTime: s.Created, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
