// Package changes turns the CA authority's change notifications into
// controller-runtime events, for the controllers that must act on every
// new trust bundle or signing authority.
package changes

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// Subscriber tells when the authority in force changed (authority.Manager).
type Subscriber interface {
	Subscribe() (<-chan struct{}, func())
}

// Forward returns a runnable that sends trigger to out after every change
// signalled by sub (coalesced as sub coalesces them). With atStart it also
// sends one right after subscribing, so no change is missed and a
// controller that acts only on changes also runs once at start.
func Forward(sub Subscriber, trigger client.Object, out chan<- event.GenericEvent, atStart bool) manager.RunnableFunc {
	return func(ctx context.Context) error {
		ch, cancel := sub.Subscribe()
		defer cancel()
		send := func() bool {
			select {
			case out <- event.GenericEvent{Object: trigger}:
				return true
			case <-ctx.Done():
				return false
			}
		}
		if atStart && !send() {
			return nil
		}
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-ch:
				if !send() {
					return nil
				}
			}
		}
	}
}
