package eviction_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mayfly-pki/mayfly/internal/eviction"
)

var t0 = time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)

func TestList(t *testing.T) {
	l, err := eviction.List{}.Evict("node-a", t0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		l          eviction.List
		node       string
		attestedAt time.Time
		now        time.Time
		agent      bool // CheckAgent refuses
		attest     bool // CheckAttest refuses
	}{
		{name: "agent_attested_before_eviction_is_refused", l: l, node: "node-a", attestedAt: t0.Add(-time.Hour), now: t0, agent: true, attest: true},
		{name: "agent_attested_in_the_eviction_second_is_refused", l: l, node: "node-a", attestedAt: t0, now: t0, agent: true, attest: true},
		{name: "agent_attested_after_eviction_passes_the_agent_check", l: l, node: "node-a", attestedAt: t0.Add(time.Second), now: t0.Add(time.Hour), agent: false, attest: true},
		{name: "other_node_is_not_affected", l: l, node: "node-b", attestedAt: t0.Add(-time.Hour), now: t0, agent: false, attest: false},
		{name: "empty_list_refuses_nothing", l: nil, node: "node-a", attestedAt: t0, now: t0, agent: false, attest: false},
		{name: "unevicted_allows_attestation_keeps_old_agents_refused", l: must(l.Unevict("node-a", t0.Add(time.Minute))), node: "node-a", attestedAt: t0.Add(-time.Hour), now: t0.Add(time.Minute), agent: true, attest: false},
		{name: "until_blocks_attestation_before_it", l: must(eviction.List{}.Evict("node-a", t0, t0.Add(time.Hour))), node: "node-a", attestedAt: t0.Add(-time.Hour), now: t0.Add(59 * time.Minute), agent: true, attest: true},
		{name: "until_allows_attestation_from_it", l: must(eviction.List{}.Evict("node-a", t0, t0.Add(time.Hour))), node: "node-a", attestedAt: t0.Add(-time.Hour), now: t0.Add(time.Hour), agent: true, attest: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.l.CheckAgent(tc.node, tc.attestedAt)
			if (err != nil) != tc.agent || (err != nil && !errors.Is(err, eviction.ErrEvicted)) {
				t.Errorf("CheckAgent = %v, want refused=%v", err, tc.agent)
			}
			err = tc.l.CheckAttest(tc.node, tc.now)
			if (err != nil) != tc.attest || (err != nil && !errors.Is(err, eviction.ErrEvicted)) {
				t.Errorf("CheckAttest = %v, want refused=%v", err, tc.attest)
			}
		})
	}
	t.Run("bad_input", func(t *testing.T) {
		if _, err := (eviction.List{}).Evict("", t0, time.Time{}); err == nil || !strings.Contains(err.Error(), "empty") {
			t.Errorf("empty node: %v", err)
		}
		if _, err := (eviction.List{}).Evict("a/b", t0, time.Time{}); err == nil || !strings.Contains(err.Error(), `"a/b"`) {
			t.Errorf("node with a slash: %v", err)
		}
		if _, err := (eviction.List{}).Evict("node-a", t0, t0); err == nil || !strings.Contains(err.Error(), "--until") {
			t.Errorf("until not in the future: %v", err)
		}
		if _, err := (eviction.List{}).Unevict("node-a", t0); err == nil || !strings.Contains(err.Error(), "not evicted") {
			t.Errorf("unevict of a node never evicted: %v", err)
		}
	})
}

// must returns l of a table row's setup, which cannot fail.
func must(l eviction.List, err error) eviction.List {
	if err != nil {
		panic(err)
	}
	return l
}

func TestDecode(t *testing.T) {
	l := must(eviction.List{}.Evict("node-a", t0, t0.Add(time.Hour)))
	raw, err := eviction.Encode(l)
	if err != nil {
		t.Fatal(err)
	}
	back, err := eviction.Decode(raw)
	if err != nil || len(back) != 1 || !back["node-a"].At.Equal(t0) || !back["node-a"].Until.Equal(t0.Add(time.Hour)) {
		t.Fatalf("round trip = %v, %v", back, err)
	}
	if l, err := eviction.Decode(nil); err != nil || len(l) != 0 {
		t.Fatalf("empty input = %v, %v", l, err)
	}
	for name, tc := range map[string]struct{ raw, want string }{
		"not_json":       {`{garbage`, "evictions"},
		"bad_node":       {`{"evictions":[{"node":"a/b","evictedAt":"2030-01-01T00:00:00Z"}]}`, "evictions[0].node"},
		"empty_node":     {`{"evictions":[{"node":"","evictedAt":"2030-01-01T00:00:00Z"}]}`, "evictions[0].node"},
		"no_time":        {`{"evictions":[{"node":"a"}]}`, "evictions[0].evictedAt"},
		"duplicate_node": {`{"evictions":[{"node":"a","evictedAt":"2030-01-01T00:00:00Z"},{"node":"a","evictedAt":"2030-01-01T00:00:00Z"}]}`, "evictions[1].node"},
		"bad_time":       {`{"evictions":[{"node":"a","evictedAt":"yesterday"}]}`, "evictions"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := eviction.Decode([]byte(tc.raw)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

func testStore(t *testing.T, s eviction.Store) {
	t.Helper()
	ctx := context.Background()
	if l, err := s.Load(ctx); err != nil || len(l) != 0 {
		t.Fatalf("Load of an empty store = %v, %v", l, err)
	}
	evict := func(node string) func(eviction.List) (eviction.List, error) {
		return func(l eviction.List) (eviction.List, error) { return l.Evict(node, t0, time.Time{}) }
	}
	for _, n := range []string{"node-a", "node-b"} {
		if err := s.Update(ctx, evict(n)); err != nil {
			t.Fatal(err)
		}
	}
	l, err := s.Load(ctx)
	if err != nil || len(l) != 2 {
		t.Fatalf("Load = %v, %v; want two nodes", l, err)
	}
	refuse := errors.New("refused by f")
	if err := s.Update(ctx, func(eviction.List) (eviction.List, error) { return nil, refuse }); !errors.Is(err, refuse) {
		t.Fatalf("Update returns %v, want f's error", err)
	}
}

func TestFileStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := eviction.FileStore{Dir: dir}
	testStore(t, s)
	st, err := os.Stat(filepath.Join(dir, eviction.File))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	if err := os.WriteFile(filepath.Join(dir, eviction.File), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Load of a corrupt file: %v", err)
	}
}

func TestSecretStore(t *testing.T) {
	client := fake.NewClientset()
	testStore(t, eviction.SecretStore{Client: client, Namespace: "mayfly-system"})
	sec, err := client.CoreV1().Secrets("mayfly-system").Get(context.Background(), eviction.SecretName, metav1.GetOptions{})
	if err != nil || sec.Type != corev1.SecretTypeOpaque {
		t.Fatalf("Secret = %v, %v", sec, err)
	}
	sec.Data[eviction.SecretKey] = []byte("{garbage")
	if _, err := client.CoreV1().Secrets("mayfly-system").Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := (eviction.SecretStore{Client: client, Namespace: "mayfly-system"}).Load(context.Background()); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Load of a corrupt Secret: %v", err)
	}
}

func TestSourceNotifiesChangesAndKeepsTheListOnErrors(t *testing.T) {
	dir := t.TempDir()
	store := eviction.FileStore{Dir: dir}
	src := eviction.NewSource(store, nil)
	if _, err := src.List(); !errors.Is(err, eviction.ErrNotLoaded) {
		t.Fatalf("List before the first read = %v, want ErrNotLoaded", err)
	}
	ctx := context.Background()
	if err := src.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	changes, unsubscribe := src.Subscribe()
	defer unsubscribe()
	if err := src.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
		t.Fatal("notified without a change")
	default:
	}
	if err := store.Update(ctx, func(l eviction.List) (eviction.List, error) { return l.Evict("node-a", t0, time.Time{}) }); err != nil {
		t.Fatal(err)
	}
	if err := src.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	default:
		t.Fatal("no notification after an eviction")
	}
	if l, err := src.List(); err != nil || l.CheckAgent("node-a", t0.Add(-time.Hour)) == nil {
		t.Fatalf("the source does not hold the eviction (%v)", err)
	}
	if err := os.WriteFile(filepath.Join(dir, eviction.File), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := src.Refresh(ctx); err == nil {
		t.Fatal("Refresh of a corrupt store succeeded")
	}
	if l, err := src.List(); err != nil || l.CheckAgent("node-a", t0.Add(-time.Hour)) == nil {
		t.Fatalf("a read error made the source forget an eviction (%v)", err)
	}
	t.Run("a_store_never_read_is_reported", func(t *testing.T) {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, eviction.File), []byte("{garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		src := eviction.NewSource(eviction.FileStore{Dir: d}, nil)
		_ = src.Refresh(ctx)
		if _, err := src.List(); !errors.Is(err, eviction.ErrNotLoaded) || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("List = %v, want ErrNotLoaded with the cause", err)
		}
	})
}
