package oidc_test

import (
	"crypto"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/oidc"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
)

func TestConfigMapPublisher(t *testing.T) {
	c := cluster.Start(t)
	s := bootstrap(t, minter())
	keys := s.JWTKeys(t0)
	p := &oidc.ConfigMapPublisher{Client: c.Client, Namespace: "default", Name: "mayfly-jwks",
		Keys: func() (map[string]crypto.PublicKey, error) { return keys, nil }}
	read := func() string {
		t.Helper()
		cm, err := c.Client.CoreV1().ConfigMaps("default").Get(t.Context(), "mayfly-jwks", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm.Data[oidc.ConfigMapKey]
	}
	if err := p.Publish(t.Context()); err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := read(); !strings.Contains(got, s.JWT.Current.KeyID) {
		t.Fatalf("ConfigMap holds %s, want the current key", got)
	}
	// A new key is published into the same ConfigMap.
	s2 := bootstrap(t, minter())
	keys = s2.JWTKeys(t0)
	if err := p.Publish(t.Context()); err != nil {
		t.Fatalf("update: %v", err)
	}
	if got := read(); !strings.Contains(got, s2.JWT.Current.KeyID) || strings.Contains(got, s.JWT.Current.KeyID) {
		t.Fatalf("ConfigMap holds %s after the keys changed", got)
	}
	// A ConfigMap that is not ours is left alone.
	if _, err := c.Client.CoreV1().ConfigMaps("default").Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "someone-else"}, Data: map[string]string{"x": "y"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p.Name = "someone-else"
	if err := p.Publish(t.Context()); err == nil || !strings.Contains(err.Error(), "not overwriting") {
		t.Fatalf("Publish over a foreign ConfigMap: %v", err)
	}
}
