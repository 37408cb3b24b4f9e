package csi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/mayfly-pki/mayfly/internal/test/promtest"
)

// TestRegistrarAnswersTheKubelet plays the kubelet's plugin watcher over the
// real registration socket: GetInfo, then the registration verdicts.
func TestRegistrarAnswersTheKubelet(t *testing.T) {
	dir := socketDir(t, "mayfly-reg")
	reg := prometheus.NewRegistry()
	endpoint := "/var/lib/kubelet/plugins/csi.mayfly.dev/csi.sock"
	r, err := NewRegistrar(endpoint, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.Serve(ctx, dir) }()

	sock := filepath.Join(dir, RegistrationSocketName)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := registerapi.NewRegistrationClient(conn)
	info, err := client.GetInfo(ctx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if info.GetType() != registerapi.CSIPlugin || info.GetName() != DriverName || info.GetEndpoint() != endpoint ||
		len(info.GetSupportedVersions()) != 1 || info.GetSupportedVersions()[0] != "1.0.0" {
		t.Fatalf("GetInfo = %v", info)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	if v, _ := promtest.Value(t, reg, "mayfly_agent_csi_kubelet_registered"); v != 0 {
		t.Fatalf("registered before the kubelet said so: %v", v)
	}

	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version 1.0.0 unsupported"}); err != nil {
		t.Fatal(err)
	}
	if ok, msg := r.Status(); ok || msg != "version 1.0.0 unsupported" {
		t.Fatalf("after a refusal: %v %q", ok, msg)
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if ok, msg := r.Status(); !ok || msg != "" {
		t.Fatalf("after registration: %v %q", ok, msg)
	}
	if v, _ := promtest.Value(t, reg, "mayfly_agent_csi_kubelet_registered"); v != 1 {
		t.Fatalf("metric after registration = %v", v)
	}

	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	// The kubelet deregisters a plugin whose socket is gone.
	if _, err := os.Lstat(sock); err == nil {
		t.Fatal("registration socket left behind after shutdown")
	}
}

func TestRegistrarBadInput(t *testing.T) {
	if _, err := NewRegistrar("csi.sock", nil, nil); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("relative endpoint: %v", err)
	}
	r, err := NewRegistrar("/x/csi.sock", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := r.Serve(context.Background(), filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "plugins_registry") {
		t.Fatalf("missing directory: %v", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Serve(context.Background(), file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("file as directory: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, RegistrationSocketName), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Serve(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file at the socket path: %v", err)
	}
}
