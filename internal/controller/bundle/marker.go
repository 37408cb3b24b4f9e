package bundle

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
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
	cms := m.Client.CoreV1().ConfigMaps(m.Namespace)
	cm, err := cms.Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: m.Namespace, Labels: ourLabels()},
			Data:       map[string]string{ConfigMapKey: string(bundlePEM)},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if cm.Data[ConfigMapKey] == string(bundlePEM) {
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[ConfigMapKey] = string(bundlePEM)
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}
