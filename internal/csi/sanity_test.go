package csi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	"google.golang.org/grpc"
)

// sanityChildEnv marks the child process that runs the csi-sanity suite.
const sanityChildEnv = "MAYFLY_CSI_SANITY_CHILD"

// TestSanity runs csi-sanity (csi-test v5) against the driver served on a
// unix socket. Ginkgo runs one suite per process, so that `go test
// -count=N` works the suite runs in a child process of this test binary.
func TestSanity(t *testing.T) {
	if os.Getenv(sanityChildEnv) == "1" {
		runSanity(t)
		return
	}
	if testing.Short() {
		t.Skip("csi-sanity runs in a child process; skipped with -short")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^TestSanity$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), sanityChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	summary := regexp.MustCompile(`Ran \d+ of \d+ Specs[^\n]*\n[^\n]*(Passed|FAIL)[^\n]*`).Find(out)
	if err != nil || summary == nil {
		t.Fatalf("csi-sanity failed: %v\n%s", err, out)
	}
	t.Logf("csi-sanity: %s", strings.ReplaceAll(string(summary), "\n", " "))
	if testing.Verbose() {
		t.Logf("csi-sanity output:\n%s", out)
	}
}

// runSanity serves the driver, and a stand-in Controller service on a
// second socket, and runs the suite.
//
// The driver has no Controller service: its volumes are inline, and the
// kubelet builds their volume context. csi-sanity creates a volume through
// a Controller before it can publish one, so the test serves a minimal one
// whose CreateVolume returns the volume context the kubelet would send
// (ephemeral, pod info). The specs tagged [Controller Server] exercise only
// that stand-in and are skipped.
//
// csi-sanity publishes at <TargetPath>/target and <TargetPath>/other_target;
// the driver accepts only the kubelet's layout
// <kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount. TargetPath
// is the kubernetes.io~csi directory of the pod, and kubeletPaths maps each
// <name> to <name>/mount, creating <name> as the kubelet does.
func runSanity(t *testing.T) {
	dir := socketDir(t, "mayfly-csi-sanity")

	ids := &fakeIdentities{}
	ids.push(t, newCredentials(t).issue())
	kubelet := filepath.Join(dir, "kubelet")
	podCSIDir := filepath.Join(kubelet, "pods", testPodUID, "volumes", csiPluginDir)
	if err := os.MkdirAll(filepath.Dir(podCSIDir), 0o750); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{NodeName: "sanity-node", StateDir: filepath.Join(dir, "state"), SocketDir: filepath.Join(dir, "run"), KubeletDir: kubelet, Identities: ids, Mounter: newFakeMounter(), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	nodeLis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	node := grpc.NewServer(grpc.UnaryInterceptor(kubeletPaths(podCSIDir)))
	csipb.RegisterIdentityServer(node, d)
	csipb.RegisterNodeServer(node, d)
	go func() { _ = node.Serve(nodeLis) }()
	t.Cleanup(node.Stop)

	ctrlSock := filepath.Join(dir, "controller.sock")
	lis, err := net.Listen("unix", ctrlSock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	csipb.RegisterIdentityServer(gs, d)
	csipb.RegisterControllerServer(gs, &inlineController{})
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	cfg := sanity.NewTestConfig()
	cfg.Address = sock
	cfg.ControllerAddress = ctrlSock
	cfg.TargetPath = podCSIDir
	cfg.RemoveTargetPath = os.RemoveAll // with the <name> directories the "kubelet" made
	cfg.CheckPath = func(path string) (sanity.PathKind, error) {
		fi, err := os.Lstat(kubeletTarget(podCSIDir, path))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return sanity.PathIsNotFound, nil
		case err != nil:
			return sanity.PathIsOther, err
		case fi.IsDir():
			return sanity.PathIsDir, nil
		case fi.Mode().IsRegular():
			return sanity.PathIsFile, nil
		}
		return sanity.PathIsOther, nil
	}
	cfg.StagingPath = filepath.Join(dir, "staging")
	sc := sanity.GinkgoTest(&cfg)
	gomega.RegisterFailHandler(ginkgo.Fail)
	suite, reporter := ginkgo.GinkgoConfiguration()
	suite.FailFast = true
	suite.SkipStrings = []string{`\[Controller Server\]`}
	reporter.Verbose = true
	reporter.NoColor = true
	ginkgo.RunSpecs(t, "csi.mayfly.dev sanity", suite, reporter)
	sc.Finalize()
}

// kubeletTarget maps csi-sanity's target <podCSIDir>/<name> to the path the
// kubelet would use, <podCSIDir>/<name>/mount.
func kubeletTarget(podCSIDir, path string) string {
	if filepath.Dir(path) != podCSIDir {
		return path
	}
	return filepath.Join(path, "mount")
}

// kubeletPaths rewrites the target paths of publish and unpublish requests
// with kubeletTarget, creating <name> as the kubelet does before it
// publishes.
func kubeletPaths(podCSIDir string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		switch r := req.(type) {
		case *csipb.NodePublishVolumeRequest:
			if p := kubeletTarget(podCSIDir, r.GetTargetPath()); p != r.GetTargetPath() {
				if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
					return nil, err
				}
				r.TargetPath = p
			}
		case *csipb.NodeUnpublishVolumeRequest:
			r.TargetPath = kubeletTarget(podCSIDir, r.GetTargetPath())
		}
		return handler(ctx, req)
	}
}

// inlineController stands in for the kubelet: its "volumes" carry the
// volume context of an ephemeral inline volume.
type inlineController struct {
	csipb.UnimplementedControllerServer
}

func (inlineController) ControllerGetCapabilities(context.Context, *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: []*csipb.ControllerServiceCapability{{
		Type: &csipb.ControllerServiceCapability_Rpc{Rpc: &csipb.ControllerServiceCapability_RPC{Type: csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME}},
	}}}, nil
}

func (inlineController) CreateVolume(_ context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, errors.New("name is required")
	}
	sum := sha256.Sum256([]byte(req.GetName()))
	return &csipb.CreateVolumeResponse{Volume: &csipb.Volume{
		VolumeId:      "csi-" + hex.EncodeToString(sum[:16]),
		VolumeContext: podContext(nil),
	}}, nil
}

func (inlineController) DeleteVolume(context.Context, *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	return &csipb.DeleteVolumeResponse{}, nil
}
