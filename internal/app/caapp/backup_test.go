package caapp_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundle"
	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// TestBackupRestore is the disaster-recovery procedure of docs/upgrade.md
// end to end against a real API server, through the ca command: a CA
// bootstraps in mayfly-system; ca backup copies its state into a 0600 file;
// ca restore writes it into a new namespace, where a CA started there
// serves the same root instead of minting one. Restore refuses to replace
// state without --force, a file others may read, and another trust domain.
func TestBackupRestore(t *testing.T) {
	c := startCluster(t, "mayfly-system", "recovered")
	ctx := context.Background()
	kube := c.Client
	// The ca command reaches the API server as an operator does: KUBECONFIG.
	admin, err := c.Env.AddUser(envtest.User{Name: "operator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", kubeconfig)
	config := func(name, td, ns string) string {
		path := filepath.Join(dir, name)
		text := "trustDomain: " + td + "\nhealthAddress: \"off\"\nstatusSocket: \"off\"\nkubernetes:\n  namespace: " + ns + "\n"
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ca := func(args ...string) (string, int) {
		var out bytes.Buffer
		code := caapp.Main(args, &out, &out)
		return out.String(), code
	}
	rootIn := func(ns string) []byte {
		s, err := kube.CoreV1().Secrets(ns).Get(ctx, "mayfly-ca", metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return s.Data[authority.KeyRoot]
	}

	first := runCA(t, "trustDomain: example.org\nhealthAddress: \"off\"\nkubernetes:\n  namespace: mayfly-system\n", caapp.Options{RestConfig: c.Config, Replica: "ca-first"})
	wait.For(t, "the first CA wrote its state", func() bool { return rootIn("mayfly-system") != nil })
	original := rootIn("mayfly-system")
	_ = first

	backup := filepath.Join(dir, "mayfly-ca.backup")
	if out, code := ca("backup", "--config", config("ca.yaml", "example.org", "mayfly-system"), "--out", backup); code != 0 {
		t.Fatalf("ca backup: exit %d\n%s", code, out)
	}
	filemode.Want(t, backup, 0o600)
	if out, code := ca("backup", "--config", config("ca.yaml", "example.org", "mayfly-system"), "--out", backup); code == 0 || !strings.Contains(out, "exists") {
		t.Errorf("a second ca backup to the same file: exit %d, want a refusal naming the existing file:\n%s", code, out)
	}

	recovered := config("recovered.yaml", "example.org", "recovered")
	t.Run("refuses_a_file_others_may_read", func(t *testing.T) {
		loose := filepath.Join(dir, "loose.backup")
		raw, err := os.ReadFile(backup)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(loose, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(loose, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, code := ca("restore", "--config", recovered, "--in", loose); code == 0 || !strings.Contains(out, "chmod 600") {
			t.Errorf("exit %d, want a refusal saying chmod 600:\n%s", code, out)
		}
	})
	t.Run("refuses_another_trust_domain", func(t *testing.T) {
		if out, code := ca("restore", "--config", config("other.yaml", "other.example", "recovered"), "--in", backup); code == 0 || !strings.Contains(out, "trust domain") {
			t.Errorf("exit %d, want a refusal naming the trust domain:\n%s", code, out)
		}
	})
	t.Run("refuses_what_is_not_a_backup", func(t *testing.T) {
		junk := filepath.Join(dir, "junk.backup")
		if err := os.WriteFile(junk, []byte(`{"kind":"Something"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, code := ca("restore", "--config", recovered, "--in", junk); code == 0 || !strings.Contains(out, "MayflyCABackup") {
			t.Errorf("exit %d, want a refusal naming the kind:\n%s", code, out)
		}
	})
	if rootIn("recovered") != nil {
		t.Fatal("a refused restore wrote state")
	}

	if out, code := ca("restore", "--config", recovered, "--in", backup); code != 0 {
		t.Fatalf("ca restore into a new namespace: exit %d\n%s", code, out)
	}
	if !bytes.Equal(rootIn("recovered"), original) {
		t.Fatal("the restored Secret does not hold the original root")
	}
	if out, code := ca("restore", "--config", recovered, "--in", backup); code == 0 || !strings.Contains(out, "--force") {
		t.Errorf("restore over existing state without --force: exit %d, want a refusal naming --force:\n%s", code, out)
	}
	if out, code := ca("restore", "--config", recovered, "--in", backup, "--force"); code != 0 {
		t.Errorf("restore --force: exit %d\n%s", code, out)
	}

	// A CA in the new namespace serves the restored root: the trust bundle
	// it publishes there is the original's, and no new root was minted.
	runCA(t, "trustDomain: example.org\nhealthAddress: \"off\"\nkubernetes:\n  namespace: recovered\n", caapp.Options{RestConfig: c.Config, Replica: "ca-recovered"})
	wait.For(t, "the recovered CA published the trust bundle", func() bool {
		cm, err := kube.CoreV1().ConfigMaps("recovered").Get(ctx, bundle.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		roots, err := pki.DecodeCertificates([]byte(cm.Data[bundle.ConfigMapKey]), pki.PEMLimits{})
		if err != nil {
			return false
		}
		want, err := pki.DecodeCertificates(original, pki.PEMLimits{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range roots {
			if r.Equal(want[0]) {
				return true
			}
		}
		return false
	})
	if !bytes.Equal(rootIn("recovered"), original) {
		t.Error("the recovered CA replaced the restored root")
	}
}
