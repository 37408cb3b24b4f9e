package images

import (
	"archive/tar"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func spec() Spec {
	return Spec{
		Files:      map[string][]byte{"/usr/local/bin/ca": []byte("#!binary\n")},
		Entrypoint: []string{"/usr/local/bin/ca"},
		UID:        65532, GID: 65532,
		OS: "linux", Arch: "arm64",
		Created: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC),
		Labels:  map[string]string{"org.opencontainers.image.version": "v0.2.0"},
	}
}

func TestBuildIsReproducible(t *testing.T) {
	a, err := Build(spec())
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(spec())
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds of the same spec: %s != %s", da, db)
	}
	other := spec()
	other.Files = map[string][]byte{"/usr/local/bin/ca": []byte("other\n")}
	c, err := Build(other)
	if err != nil {
		t.Fatal(err)
	}
	if dc, _ := c.Digest(); dc == da {
		t.Fatal("different content, same digest")
	}
}

func TestBuildConfigAndLayer(t *testing.T) {
	img, err := Build(spec())
	if err != nil {
		t.Fatal(err)
	}
	// Round trip through the tarball that containerd imports.
	path := filepath.Join(t.TempDir(), "ca.tar")
	tag, _ := name.NewTag("example.test/mayfly-ca:v0.2.0")
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
	img, err = tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Architecture != "arm64" || cf.OS != "linux" || cf.Config.User != "65532:65532" ||
		cf.Config.Entrypoint[0] != "/usr/local/bin/ca" || cf.Config.Labels["org.opencontainers.image.version"] != "v0.2.0" ||
		!cf.Created.Equal(spec().Created) {
		t.Fatalf("config = %+v", cf)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(spec().Created) || h.Uid != 0 {
			t.Errorf("%s: mtime %v uid %d", h.Name, h.ModTime, h.Uid)
		}
		if h.Name == "etc/passwd" {
			b, _ := io.ReadAll(tr)
			if !strings.Contains(string(b), "nonroot:x:65532:65532:") {
				t.Errorf("/etc/passwd = %q", b)
			}
		}
		got[h.Name] = h
	}
	for n, mode := range map[string]int64{"usr/local/bin/ca": 0o755, "etc/passwd": 0o644, "etc/group": 0o644, "tmp/": 0o1777, "usr/": 0o755} {
		if h, ok := got[n]; !ok || h.Mode != mode {
			t.Errorf("%s: present %v, mode %o want %o", n, ok, h.Mode, mode)
		}
	}
}

func TestBuildBadInput(t *testing.T) {
	cases := map[string]struct {
		edit func(*Spec)
		want string
	}{
		"no files":         {func(s *Spec) { s.Files = nil }, "no files"},
		"relative path":    {func(s *Spec) { s.Files["bin/x"] = nil }, `"bin/x"`},
		"unclean path":     {func(s *Spec) { s.Files["/usr/../x"] = nil }, `"/usr/../x"`},
		"passwd":           {func(s *Spec) { s.Files["/etc/passwd"] = nil }, "written by the builder"},
		"no entrypoint":    {func(s *Spec) { s.Entrypoint = nil }, "no entrypoint"},
		"missing entry":    {func(s *Spec) { s.Entrypoint = []string{"/bin/sh"} }, `"/bin/sh" is not one of the files`},
		"negative uid":     {func(s *Spec) { s.UID = -1 }, "must not be negative"},
		"no platform":      {func(s *Spec) { s.Arch = "" }, "OS and Arch"},
		"not reproducible": {func(s *Spec) { s.Created = time.Time{} }, "created time"},
	}
	for n, c := range cases {
		t.Run(n, func(t *testing.T) {
			s := spec()
			c.edit(&s)
			if _, err := Build(s); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}
