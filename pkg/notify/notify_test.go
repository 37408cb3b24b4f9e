package notify

import "testing"

func TestNotifier(t *testing.T) {
	var n Notifier
	a, cancelA := n.Subscribe()
	b, cancelB := n.Subscribe()
	defer cancelB()

	n.Notify()
	n.Notify() // coalesced with the first
	for name, ch := range map[string]<-chan struct{}{"a": a, "b": b} {
		select {
		case <-ch:
		default:
			t.Fatalf("%s: no signal", name)
		}
		select {
		case <-ch:
			t.Fatalf("%s: two signals, want them coalesced", name)
		default:
		}
	}
	cancelA()
	cancelA() // twice is safe
	if n.Len() != 1 {
		t.Fatalf("Len %d after unsubscribe, want 1", n.Len())
	}
	n.Notify()
	select {
	case <-a:
		t.Fatal("unsubscribed channel signalled")
	default:
	}
}
