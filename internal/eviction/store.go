package eviction

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
)

// Store keeps the eviction list.
type Store interface {
	// Load returns the list (empty when none was stored).
	Load(ctx context.Context) (List, error)
	// Update applies f to the stored list atomically.
	Update(ctx context.Context, f func(List) (List, error)) error
	// Describe names the store for messages.
	Describe() string
}

// File is the name of the eviction list in the standalone state directory.
const File = "agent-evictions.json"

// FileStore keeps the list in a 0600 file of the CA's state directory,
// updated under an exclusive lock and written atomically.
type FileStore struct{ Dir string }

// Describe implements Store.
func (s FileStore) Describe() string { return filepath.Join(s.Dir, File) }

// Load implements Store.
func (s FileStore) Load(context.Context) (List, error) {
	raw, err := os.ReadFile(s.Describe())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return List{}, nil
	case err != nil:
		return nil, err
	}
	l, err := Decode(raw)
	if err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", s.Describe(), err)
	}
	return l, nil
}

// Update implements Store.
func (s FileStore) Update(ctx context.Context, f func(List) (List, error)) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(s.Dir, ".agent-evictions.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("locking %s: %w", s.Describe(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // closing the file releases it anyway
	l, err := s.Load(ctx)
	if err != nil {
		return err
	}
	if l, err = f(l); err != nil {
		return err
	}
	raw, err := Encode(l)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.Describe(), raw, 0o600)
}

// SecretName is the Secret of the CA's namespace that holds the list in
// Kubernetes mode, and SecretKey its data key. A Secret rather than a
// ConfigMap: who may lift an eviction should be who may read the CA's keys,
// not whoever may edit ConfigMaps of the namespace.
const (
	SecretName = "mayfly-agent-evictions" //nolint:gosec // a Secret name, not a credential
	SecretKey  = "evictions.json"
)

// SecretStore keeps the list in the Secret SecretName of Namespace. The CA
// only reads it (get); `ca agent evict` writes it with the operator's
// credentials, compare-and-swapped on the resourceVersion.
type SecretStore struct {
	Client    kubernetes.Interface
	Namespace string
}

// Describe implements Store.
func (s SecretStore) Describe() string { return "Secret " + s.Namespace + "/" + SecretName }

// Load implements Store.
func (s SecretStore) Load(ctx context.Context) (List, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, SecretName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return List{}, nil
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", s.Describe(), err)
	}
	l, err := Decode(sec.Data[SecretKey])
	if err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", s.Describe(), err)
	}
	return l, nil
}

// Update implements Store.
func (s SecretStore) Update(ctx context.Context, f func(List) (List, error)) error {
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sec, err := secrets.Get(ctx, SecretName, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		switch {
		case create:
			sec = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: SecretName, Namespace: s.Namespace,
					Labels: map[string]string{"app.kubernetes.io/name": "mayfly", "app.kubernetes.io/component": "agent-evictions"}},
				Type: corev1.SecretTypeOpaque,
			}
		case err != nil:
			return fmt.Errorf("reading %s: %w", s.Describe(), err)
		}
		l, err := Decode(sec.Data[SecretKey])
		if err != nil {
			return fmt.Errorf("%s is corrupt: %w", s.Describe(), err)
		}
		if l, err = f(l); err != nil {
			return err
		}
		raw, err := Encode(l)
		if err != nil {
			return err
		}
		sec.Data = map[string][]byte{SecretKey: raw}
		if create {
			_, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("secrets"), SecretName, err)
			}
		} else {
			_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{})
		}
		if err != nil && !apierrors.IsConflict(err) {
			return fmt.Errorf("writing %s: %w", s.Describe(), err)
		}
		return err
	})
}
