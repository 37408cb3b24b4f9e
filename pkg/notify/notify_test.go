package notify

import (
	"slices"
	"testing"
)

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

func TestSet(t *testing.T) {
	var s Set[string]
	if got := s.All(); len(got) != 0 {
		t.Fatalf("zero Set holds %v", got)
	}
	removeA := s.Add("a")
	removeB := s.Add("b")
	all := s.All()
	slices.Sort(all)
	if !slices.Equal(all, []string{"a", "b"}) || s.Len() != 2 {
		t.Fatalf("All %v, Len %d; want [a b], 2", all, s.Len())
	}
	removeA()
	removeA() // twice is safe
	if all := s.All(); !slices.Equal(all, []string{"b"}) || s.Len() != 1 {
		t.Fatalf("after removing a: All %v, Len %d; want [b], 1", all, s.Len())
	}
	removeB()
	if s.Len() != 0 {
		t.Fatalf("Len %d after removing both, want 0", s.Len())
	}
}
