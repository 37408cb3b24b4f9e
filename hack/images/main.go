// Command images builds mayfly's OCI images without a container engine
// (`make images`): it cross-compiles the static binaries for each platform,
// puts them on an empty base (internal/images) and writes, per image, an OCI
// image layout holding the multi-platform index (the release artifact) and
// one tarball per platform that `ctr images import` loads into containerd.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/mayfly-pki/mayfly/internal/images"
)

// image is one of the images `make images` builds.
type image struct {
	name     string   // repository name under --registry
	pkgs     []string // Go packages; each binary lands in /usr/local/bin
	entry    string   // entrypoint binary
	uid, gid int
	title    string
}

var all = []image{
	{name: "mayfly-ca", pkgs: []string{"./cmd/ca"}, entry: "ca", uid: 65532, gid: 65532, title: "mayfly CA"},
	// The agent mounts CSI volumes into pods and reads every process's
	// cgroup: it runs as root (the DaemonSet says so too).
	{name: "mayfly-agent", pkgs: []string{"./cmd/agent"}, entry: "agent", uid: 0, gid: 0, title: "mayfly node agent"},
	{name: "mayfly-demo", pkgs: []string{"./cmd/demo-server", "./cmd/demo-client", "./cmd/demo-files"}, entry: "demo-server", uid: 65532, gid: 65532, title: "mayfly demo workloads"},
	{name: "pause", pkgs: []string{"./hack/pause"}, entry: "pause", uid: 65535, gid: 65535, title: "pod sandbox"},
}

func main() {
	out := flag.String("out", "dist/images", "output directory")
	registry := flag.String("registry", "ghcr.io/mayfly-pki", "image repository prefix")
	version := flag.String("version", "", "release version (image tag and `ca version`)")
	source := flag.String("source", "https://github.com/mayfly-pki/mayfly", "org.opencontainers.image.source")
	revision := flag.String("revision", "", "VCS revision (org.opencontainers.image.revision)")
	created := flag.Int64("created", 0, "fixed creation time, Unix seconds (SOURCE_DATE_EPOCH)")
	platforms := flag.String("platforms", "linux/amd64,linux/arm64", "comma-separated OS/ARCH list")
	only := flag.String("only", "", "comma-separated image names to build (default: all)")
	flag.Parse()
	if err := run(*out, *registry, *version, *source, *revision, *created, *platforms, *only); err != nil {
		log.Fatalf("images: %v", err)
	}
}

func run(out, registry, version, source, revision string, created int64, platforms, only string) error {
	if version == "" {
		return errors.New("--version is required")
	}
	if created <= 0 {
		return errors.New("--created is required (Unix seconds of the source's commit)")
	}
	when := time.Unix(created, 0).UTC()
	var plats []v1.Platform
	for p := range strings.SplitSeq(platforms, ",") {
		goos, arch, ok := strings.Cut(strings.TrimSpace(p), "/")
		if !ok || goos != "linux" || arch == "" {
			return fmt.Errorf("--platforms: %q is not linux/ARCH", p)
		}
		plats = append(plats, v1.Platform{OS: goos, Architecture: arch})
	}
	want := map[string]bool{}
	for n := range strings.SplitSeq(only, ",") {
		if n != "" {
			want[n] = true
		}
	}
	binDir, err := os.MkdirTemp("", "mayfly-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	if err := os.MkdirAll(out, 0o755); err != nil { //nolint:gosec // image artifacts, readable by all
		return err
	}
	for _, im := range all {
		if len(want) > 0 && !want[im.name] {
			continue
		}
		ref, err := name.NewTag(registry + "/" + im.name + ":" + version)
		if err != nil {
			return fmt.Errorf("%s: %w", im.name, err)
		}
		idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		for _, p := range plats {
			files := map[string][]byte{}
			for _, pkg := range im.pkgs {
				bin := filepath.Base(pkg)
				dst := filepath.Join(binDir, p.Architecture, bin)
				if err := goBuild(pkg, dst, p, version); err != nil {
					return err
				}
				b, err := os.ReadFile(dst)
				if err != nil {
					return err
				}
				files["/usr/local/bin/"+bin] = b
			}
			img, err := images.Build(images.Spec{
				Files:      files,
				Entrypoint: []string{"/usr/local/bin/" + im.entry},
				UID:        im.uid, GID: im.gid,
				OS: p.OS, Arch: p.Architecture,
				Created: when,
				Labels: map[string]string{
					"org.opencontainers.image.title":    im.title,
					"org.opencontainers.image.version":  version,
					"org.opencontainers.image.source":   source,
					"org.opencontainers.image.revision": revision,
					"org.opencontainers.image.created":  when.Format(time.RFC3339),
					"org.opencontainers.image.licenses": "Apache-2.0",
				},
			})
			if err != nil {
				return fmt.Errorf("%s %s: %w", im.name, p.Architecture, err)
			}
			tarPath := filepath.Join(out, fmt.Sprintf("%s-%s.tar", im.name, p.Architecture))
			if err := tarball.WriteToFile(tarPath, ref, img); err != nil {
				return fmt.Errorf("%s: %w", tarPath, err)
			}
			plat := p
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &plat}})
			d, err := img.Digest()
			if err != nil {
				return err
			}
			fmt.Printf("%s\t%s\t%s\n", ref, p.Architecture, d)
		}
		dir := filepath.Join(out, im.name+".oci")
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		if _, err := layout.Write(dir, empty.Index); err != nil {
			return err
		}
		lp, err := layout.FromPath(dir)
		if err != nil {
			return err
		}
		if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": ref.String(),
		})); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s\tindex\t%s\n", ref, d)
	}
	return nil
}

// goBuild cross-compiles a static, reproducible binary.
func goBuild(pkg, dst string, p v1.Platform, version string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=true", //nolint:gosec // our own packages
		"-ldflags", "-s -w -buildid= -X github.com/mayfly-pki/mayfly/internal/version.Version="+version,
		"-o", dst, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s for %s/%s: %w", pkg, p.OS, p.Architecture, err)
	}
	return nil
}
