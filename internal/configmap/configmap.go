// Package configmap keeps one key of a ConfigMap that the CA publishes
// (the trust bundle in its own namespace, the JWKS) at a value, written
// directly through the API rather than by a controller.
package configmap

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// Put makes the ConfigMap name in cms hold value under key. A missing
// ConfigMap is created with labels; one that holds value already is left
// alone; otherwise key is updated, and the ConfigMap's other keys and
// labels stay. owned, when not nil, is asked first whether an existing
// ConfigMap may be changed, and its error returned. An error of the API
// (a conflict with a concurrent writer, say) is returned as it is.
func Put(ctx context.Context, cms corev1client.ConfigMapInterface, name string, labels map[string]string, key, value string, owned func(*corev1.ConfigMap) error) error {
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Data:       map[string]string{key: value},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if owned != nil {
		if err := owned(cm); err != nil {
			return err
		}
	}
	if cm.Data[key] == value {
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[key] = value
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}
