package agentapp_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/handshake"
)

// TestKubernetesCSIFileConsumersThroughRootRotationAndTaint: two pods of
// two ServiceAccounts each mount a CSI inline volume (files mode); a plain
// crypto/tls server and client read tls.crt, tls.key and ca.crt from the
// two volumes for every handshake, every 500ms, through a root rotation
// requested as `ca rotate-root` does in Kubernetes mode (on the CA
// Secret), then through `ca taint --authority intermediate`. No handshake
// may fail: every volume's ca.crt holds the next root before any leaf
// under it is written, and the leaves move off the tainted intermediate.
// (The writeDir consumers of the same verdicts are
// TestEndToEndRootRotationFileConsumers and TestEndToEndTaintFileConsumers:
// writeDir is the standalone agent's, CSI the Kubernetes agent's.)
func TestKubernetesCSIFileConsumersThroughRootRotationAndTaint(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a real root rotation and taint (about 60s); skipped with -short")
	}
	s := startKubernetesStack(t, "workloads: {minTTL: 10s, defaultTTL: 20s, maxTTL: 1h}\nrotation: {kubernetesPropagationDelay: 0s}\n")
	conn := s.csiConn(t)
	dirs := map[string]string{}
	for _, sa := range []string{"server", "client"} {
		p := s.pod(t, sa, sa+"-1", &corev1.PodStatus{Phase: corev1.PodRunning})
		dirs[sa] = s.publish(t, conn, p, "csi-"+sa)
	}
	pairs := []handshake.Pair{{Name: "CSI file consumers", Handshake: listenFiles(t, dirs).Handshake}}
	throughRootRotation(t, "root rotation, CSI file consumers", dirs, pairs, func() error {
		return authority.RequestRootRotation(context.Background(), s.store)
	})
	throughTaint(t, "intermediate taint, CSI file consumers", dirs, pairs, func() error {
		_, err := authority.TaintAuthority(context.Background(), s.store, authority.TaintRequest{Role: authority.RoleIntermediate}, time.Now())
		return err
	})
}
