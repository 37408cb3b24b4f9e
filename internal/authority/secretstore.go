package authority

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// SecretStore keeps the state in one Secret of the CA's namespace. Save is
// an Update with the resourceVersion read, so the API server rejects a
// second writer with a conflict.
type SecretStore struct {
	client    kubernetes.Interface
	namespace string
	name      string
}

// NewSecretStore returns the store of the Secret namespace/name.
func NewSecretStore(client kubernetes.Interface, namespace, name string) *SecretStore {
	return &SecretStore{client: client, namespace: namespace, name: name}
}

// Describe returns "Secret namespace/name".
func (s *SecretStore) Describe() string { return "Secret " + s.namespace + "/" + s.name }

// Load reads the Secret.
func (s *SecretStore) Load(ctx context.Context) (*Snapshot, error) {
	sec, err := s.client.CoreV1().Secrets(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", s.Describe(), err)
	}
	return &Snapshot{Data: sec.Data, Version: sec.ResourceVersion}, nil
}

// Save creates the Secret (version "") or updates it at version.
func (s *SecretStore) Save(ctx context.Context, data map[string][]byte, version string) (string, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:            s.name,
			Namespace:       s.namespace,
			ResourceVersion: version,
			Labels:          map[string]string{"app.kubernetes.io/name": "mayfly", "app.kubernetes.io/component": "ca-state"},
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
	var out *corev1.Secret
	var err error
	if version == "" {
		out, err = s.client.CoreV1().Secrets(s.namespace).Create(ctx, sec, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return "", fmt.Errorf("%w: %s was created by someone else", ErrConflict, s.Describe())
		}
	} else {
		out, err = s.client.CoreV1().Secrets(s.namespace).Update(ctx, sec, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return "", fmt.Errorf("%w: %s: %w", ErrConflict, s.Describe(), err)
		}
	}
	if err != nil {
		return "", fmt.Errorf("writing %s: %w", s.Describe(), err)
	}
	return out.ResourceVersion, nil
}
