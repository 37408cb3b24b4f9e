package oidc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"

	"github.com/mayfly-pki/mayfly/internal/configmap"
)

// ConfigMapKey is the key of the JWKS in the published ConfigMap.
const ConfigMapKey = "jwks.json"

// managedLabel marks the ConfigMaps the publisher owns; it never writes
// over one without it.
const managedLabel = "mayfly.dev/jwks"

// ConfigMapPublisher keeps the JWKS in a ConfigMap (key jwks.json), for
// relying parties that read it from the cluster or a copy job that puts it
// on a static host. It writes at start and after every change of the keys.
type ConfigMapPublisher struct {
	Client          kubernetes.Interface
	Namespace, Name string
	Keys            KeySource
	// Changes subscribes to changes of the keys (authority.Manager.Subscribe).
	Changes func() (<-chan struct{}, func())
	Logger  *slog.Logger
}

// Start publishes until ctx is done, retrying a failed write every 10s.
func (p *ConfigMapPublisher) Start(ctx context.Context) error {
	log := p.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	changed, cancel := p.Changes()
	defer cancel()
	retry := time.NewTimer(0)
	defer retry.Stop()
	<-retry.C
	for {
		if err := p.Publish(ctx); err != nil {
			log.Warn("publishing the JWKS ConfigMap failed; retrying", "namespace", p.Namespace, "name", p.Name, "error", err)
			retry.Reset(10 * time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-retry.C:
		}
	}
}

// Publish writes the JWKS in force into the ConfigMap, creating it if
// missing and leaving it alone when it holds that JWKS already. A
// ConfigMap of that name not labelled mayfly.dev/jwks is not overwritten.
func (p *ConfigMapPublisher) Publish(ctx context.Context) error {
	keys, err := p.Keys()
	if err != nil {
		return err
	}
	jwks, err := JWKS(keys)
	if err != nil {
		return err
	}
	labels := map[string]string{managedLabel: "true", "app.kubernetes.io/managed-by": "mayfly"}
	err = configmap.Put(ctx, p.Client.CoreV1().ConfigMaps(p.Namespace), p.Name, labels, ConfigMapKey, string(jwks), func(cm *corev1.ConfigMap) error {
		if cm.Labels[managedLabel] != "true" {
			return fmt.Errorf("ConfigMap %s/%s exists and is not labelled %s=true: not overwriting it", p.Namespace, p.Name, managedLabel)
		}
		return nil
	})
	if apierrors.IsConflict(err) {
		return errors.New("ConfigMap changed meanwhile; retrying")
	}
	return err
}
