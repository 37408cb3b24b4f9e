package bundle

import (
	"context"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/mayfly-pki/mayfly/internal/configmap"
)

// Marker is the authority.Marker of a CA whose state is in a Secret: the
// trust bundle ConfigMap in the CA's own namespace. It is written directly,
// not through the Reconciler, because the authority marks before it
// serves and before any controller runs.
type Marker struct {
	Client    kubernetes.Interface
	Namespace string
}

// Marked reports whether the ConfigMap holds a bundle.
func (m Marker) Marked(ctx context.Context) (bool, error) {
	cm, err := m.Client.CoreV1().ConfigMaps(m.Namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return cm.Data[ConfigMapKey] != "", nil
}

// Mark creates the ConfigMap, or updates it when its bundle differs.
func (m Marker) Mark(ctx context.Context, bundlePEM []byte) error {
	return configmap.Put(ctx, m.Client.CoreV1().ConfigMaps(m.Namespace), ConfigMapName, ourLabels(), ConfigMapKey, string(bundlePEM), nil)
}
