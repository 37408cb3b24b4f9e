package csi

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func TestServeReplacesAStaleSocket(t *testing.T) {
	e := newEnv(t)
	dir := socketDir(t, "mayfly-csi")
	sock := filepath.Join(dir, "csi.sock")
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = stale.Close()

	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- e.d.Serve(ctx, sock) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	info, err := csipb.NewIdentityClient(conn).GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{}, grpc.WaitForReady(true))
	if err != nil || info.GetName() != DriverName {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); err == nil {
		t.Fatal("socket left behind after shutdown")
	}

	t.Run("refuses to replace a file", func(t *testing.T) {
		if err := os.WriteFile(sock, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := e.d.Serve(context.Background(), sock)
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Fatalf("Serve over a regular file: %v", err)
		}
	})
}
