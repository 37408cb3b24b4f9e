package adoption_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/mayfly-pki/mayfly/internal/adoption"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
)

func TestTrackerCountsPerVersion(t *testing.T) {
	tr := adoption.NewTracker()
	tr.Ack("a", "v1")
	tr.Ack("b", "v1")
	g := tr.Generation()
	tr.Ack("a", "v1") // repeated: no change
	if tr.Generation() != g {
		t.Fatal("a repeated acknowledgement changed the generation")
	}
	tr.Ack("a", "v2")
	tr.Ack("", "v2") // ignored
	tr.Ack("c", "")  // ignored
	if got := [2]int{tr.Count("v1"), tr.Count("v2")}; got != [2]int{1, 1} {
		t.Fatalf("counts v1, v2 = %v, want [1 1]", got)
	}
	if !tr.Holds("a", "v2") || tr.Holds("a", "v1") {
		t.Fatal("a must hold v2 only")
	}
	acks, _ := tr.Snapshot()
	if !slices.Equal(acks["v1"], []string{"b"}) || !slices.Equal(acks["v2"], []string{"a"}) || len(acks) != 2 {
		t.Fatalf("snapshot = %v", acks)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	acks := adoption.Acks{"v1": {"a", "b"}, "v2": {"c"}}
	data, err := adoption.Encode(acks)
	if err != nil {
		t.Fatal(err)
	}
	got, err := adoption.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	for v, nodes := range acks {
		for _, n := range nodes {
			if _, ok := got[v][n]; !ok {
				t.Errorf("%s lost from %s", n, v)
			}
		}
	}
}

func gz(s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	_, _ = w.Write([]byte(s))
	_ = w.Close()
	return b.Bytes()
}

func TestDecodeRejectsBadRecords(t *testing.T) {
	// A record that expands to 17 MiB, beyond the 16 MiB limit.
	huge, err := os.ReadFile("testdata/expands-17MiB.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not gzip"},
		{"not gzip", []byte(`{"acks":{}}`), "not gzip"},
		{"truncated gzip", gz(`{"acks":{"v1":["a"]}}`)[:12], "invalid adoption record"},
		{"not JSON", gz("nope"), "invalid adoption record"},
		{"empty version", gz(`{"acks":{"":["a"]}}`), "empty bundle version"},
		{"empty node", gz(`{"acks":{"v1":["a",""]}}`), `acks["v1"][1]: empty node name`},
		{"expands beyond the limit", huge, "expands beyond"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := adoption.Decode(tt.data)
			if err == nil || !errors.Is(err, adoption.ErrInvalidRecord) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode error = %v, want ErrInvalidRecord mentioning %q", err, tt.want)
			}
		})
	}
}

func TestConfigMapNameRejectsBadReplicaNames(t *testing.T) {
	if n, err := adoption.ConfigMapName("mayfly-ca-7d9f-abcde"); err != nil || n != "mayfly-adoption-mayfly-ca-7d9f-abcde" {
		t.Fatalf("ConfigMapName = %q, %v", n, err)
	}
	for _, bad := range []string{"", "Upper", "a/b", strings.Repeat("a", 300)} {
		if _, err := adoption.ConfigMapName(bad); err == nil || (bad != "" && !strings.Contains(err.Error(), "replica name")) {
			t.Errorf("ConfigMapName(%q) error = %v, want one naming the replica", bad, err)
		}
	}
}

type unsynced struct{}

func (unsynced) Nodes() ([]string, bool) { return nil, false }

func TestViewPending(t *testing.T) {
	tr := adoption.NewTracker()
	view := &adoption.View{Nodes: adoption.StaticNodes{"a", "b", "c"}, Acks: []adoption.AckSource{tr}}

	t.Run("three expected nodes and no agent: not adopted", func(t *testing.T) {
		if view.Adopted("v2") {
			t.Fatal("adopted with no acknowledgement")
		}
		if p := view.Pending("v2"); !slices.Equal(p.Nodes, []string{"a", "b", "c"}) || p.Expected != 3 {
			t.Fatalf("pending = %+v", p)
		}
	})
	t.Run("an old version does not count", func(t *testing.T) {
		tr.Ack("a", "v1")
		tr.Ack("b", "v2")
		if p := view.Pending("v2"); !slices.Equal(p.Nodes, []string{"a", "c"}) {
			t.Fatalf("pending = %v, want [a c]", p.Nodes)
		}
	})
	t.Run("every node on the version: adopted", func(t *testing.T) {
		tr.Ack("a", "v2")
		tr.Ack("c", "v2")
		if !view.Adopted("v2") {
			t.Fatal("not adopted")
		}
	})
	t.Run("no node expected: adopted", func(t *testing.T) {
		if !(&adoption.View{Nodes: adoption.StaticNodes{}}).Adopted("v2") {
			t.Fatal("an empty fleet waits")
		}
	})
	t.Run("unknown nodes: not adopted", func(t *testing.T) {
		v := &adoption.View{Nodes: unsynced{}, Acks: []adoption.AckSource{tr}}
		if v.Adopted("v2") || v.Pending("v2").Known {
			t.Fatal("adopted before the node list is known")
		}
	})
	t.Run("standalone: configured nodes and nodes that acknowledged", func(t *testing.T) {
		tr2 := adoption.NewTracker()
		tr2.Ack("extra", "v1")
		v := &adoption.View{Nodes: adoption.UnionNodes{adoption.StaticNodes{"a"}, tr2}, Acks: []adoption.AckSource{tr2}}
		if p := v.Pending("v2"); !slices.Equal(p.Nodes, []string{"a", "extra"}) {
			t.Fatalf("pending = %v, want [a extra]", p.Nodes)
		}
	})
}

func TestCollectorAndStatus(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	var names adoption.StaticNodes
	for i := range 25 {
		names = append(names, fmt.Sprintf("node-%02d", i))
	}
	tr := adoption.NewTracker()
	tr.Ack("node-00", "v2")
	waiting := true
	c := &adoption.Collector{
		View: &adoption.View{Nodes: names, Acks: []adoption.AckSource{tr}},
		Now:  func() time.Time { return now },
		Wait: func() (string, time.Time, bool) { return "v2", now.Add(90 * time.Second), waiting },
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := promlint.NewWithMetricFamilies(mfs).Lint(); err != nil || len(problems) > 0 {
		t.Fatalf("promlint: %v %v", problems, err)
	}
	want := map[string]float64{
		"mayfly_ca_root_adoption_expected_nodes":         25,
		"mayfly_ca_root_adoption_pending_nodes":          24,
		"mayfly_ca_root_adoption_wait_remaining_seconds": 90,
	}
	for name, v := range want {
		if got := gauge(t, reg, name); got != v {
			t.Errorf("%s = %v, want %v", name, got, v)
		}
	}
	st := c.StatusOf()
	if st == nil || st.Pending != 24 || len(st.PendingNodes) != adoption.MaxListed || st.PendingNodes[0] != "node-01" || st.WaitRemaining != 90*time.Second {
		t.Fatalf("status = %+v", st)
	}
	waiting = false
	if c.StatusOf() != nil {
		t.Fatal("status without a waiting root")
	}
	if got := gauge(t, reg, "mayfly_ca_root_adoption_pending_nodes"); got != 0 {
		t.Errorf("pending without a waiting root = %v, want 0", got)
	}
}

func gauge(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	v, ok := promtest.Value(t, g, name)
	if !ok {
		t.Fatalf("%s not gathered", name)
	}
	return v
}
