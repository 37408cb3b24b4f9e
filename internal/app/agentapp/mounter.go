package agentapp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/csi"
)

// cmdMounter is agent mounter: the privileged mount helper of an agent that
// runs without privilege. It serves csi.MountServer on a 0600 socket in a
// directory only its uid may enter, until SIGTERM.
func cmdMounter(args []string, stderr io.Writer) error {
	fs := cli.NewFlags("agent mounter", stderr)
	socket := fs.String("socket", "", "the unix socket to serve (the agent's kubernetes.csi.mounterSocket)")
	source := fs.String("source", "", "the only directory it mounts: the agent's socket directory (dirname of socketPath)")
	kubeletDir := fs.String("kubelet-dir", csi.DefaultKubeletDir, "the kubelet's root directory; targets must be CSI volumes under it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *socket == "" || !filepath.IsAbs(*socket):
		return fmt.Errorf("--socket: an absolute path is required, got %q", *socket)
	case *source == "" || !filepath.IsAbs(*source):
		return fmt.Errorf("--source: an absolute path is required, got %q", *source)
	case !filepath.IsAbs(*kubeletDir) || filepath.Clean(*kubeletDir) == "/":
		return fmt.Errorf("--kubelet-dir: an absolute directory other than / is required, got %q", *kubeletDir)
	}
	if err := os.MkdirAll(filepath.Dir(*socket), 0o700); err != nil {
		return fmt.Errorf("--socket: %w", err)
	}
	if err := os.Remove(*socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("--socket: removing a stale socket: %w", err)
	}
	lis, err := net.Listen("unix", *socket)
	if err != nil {
		return fmt.Errorf("--socket: %w", err)
	}
	if err := os.Chmod(*socket, 0o600); err != nil {
		_ = lis.Close()
		return fmt.Errorf("--socket: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	slog.New(slog.NewJSONHandler(stderr, nil)).Info("mount helper serving", "socket", *socket, "source", *source, "kubelet_dir", *kubeletDir)
	return (&csi.MountServer{Mounter: csi.LinuxMounter{}, Source: *source, KubeletDir: filepath.Clean(*kubeletDir)}).Serve(ctx, lis)
}
