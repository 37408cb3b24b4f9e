package authority

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	toolscache "k8s.io/client-go/tools/cache"
)

// Watch calls changed whenever the Secret is added, updated or deleted,
// until ctx is done. It watches this one Secret only, never the namespace's
// other Secrets. Every replica reloads its Manager on it, so that it signs
// with the slot the leader activated, without restart.
func (s *SecretStore) Watch(ctx context.Context, changed func()) error {
	f := informers.NewSharedInformerFactoryWithOptions(s.client, 10*time.Minute,
		informers.WithNamespace(s.namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", s.name).String()
		}))
	inf := f.Core().V1().Secrets().Informer()
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { changed() },
		UpdateFunc: func(_, _ any) { changed() },
		DeleteFunc: func(any) { changed() },
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
	return nil
}
