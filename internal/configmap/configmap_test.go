package configmap_test

import (
	"errors"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/configmap"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
)

func TestPut(t *testing.T) {
	c := cluster.Start(t)
	cms := c.Client.CoreV1().ConfigMaps("default")
	labels := map[string]string{"app.kubernetes.io/managed-by": "mayfly"}
	get := func() *corev1.ConfigMap {
		t.Helper()
		cm, err := cms.Get(t.Context(), "put", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm
	}

	t.Run("creates_a_missing_configmap_with_its_labels", func(t *testing.T) {
		if err := configmap.Put(t.Context(), cms, "put", labels, "k", "v1", nil); err != nil {
			t.Fatal(err)
		}
		if cm := get(); cm.Data["k"] != "v1" || cm.Labels["app.kubernetes.io/managed-by"] != "mayfly" {
			t.Fatalf("created %v with labels %v", cm.Data, cm.Labels)
		}
	})
	t.Run("leaves_an_equal_value_alone", func(t *testing.T) {
		before := get().ResourceVersion
		if err := configmap.Put(t.Context(), cms, "put", labels, "k", "v1", nil); err != nil {
			t.Fatal(err)
		}
		if after := get().ResourceVersion; after != before {
			t.Errorf("resourceVersion %s -> %s: an equal value was written again", before, after)
		}
	})
	t.Run("updates_the_key_and_keeps_the_others", func(t *testing.T) {
		cm := get()
		cm.Data["other"] = "kept"
		if _, err := cms.Update(t.Context(), cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := configmap.Put(t.Context(), cms, "put", labels, "k", "v2", nil); err != nil {
			t.Fatal(err)
		}
		if cm := get(); cm.Data["k"] != "v2" || cm.Data["other"] != "kept" {
			t.Errorf("after the update: %v", cm.Data)
		}
	})
	t.Run("owned_refuses_a_change", func(t *testing.T) {
		errNotOurs := errors.New("not ours")
		err := configmap.Put(t.Context(), cms, "put", labels, "k", "v3", func(*corev1.ConfigMap) error { return errNotOurs })
		if !errors.Is(err, errNotOurs) {
			t.Fatalf("Put = %v, want the error of owned", err)
		}
		if cm := get(); cm.Data["k"] != "v2" {
			t.Errorf("a refused Put changed the value to %q", cm.Data["k"])
		}
	})
}
