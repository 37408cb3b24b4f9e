package agent

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

func TestPodIndex(t *testing.T) {
	var x PodIndex
	releaseA := x.Add("default/web", "uid-a", nil)
	releaseB := x.Add("default/web", "uid-b", StaticToken("token-b"))
	releaseA2 := x.Add("default/web", "uid-a", StaticToken("token-a")) // a second user of uid-a
	x.Add("default/web", "uid-b", nil)                                 // an empty token keeps the known one
	releaseDB := x.Add("default/db", "uid-c", nil)

	if got, want := x.UIDs("default/web"), []string{"uid-b", "uid-a"}; !slices.Equal(got, want) {
		t.Errorf("UIDs = %v, want %v (the most recently added first)", got, want)
	}
	if got := x.Token("default/web", "uid-a"); got != "token-a" {
		t.Errorf("token of uid-a = %q, want the one its second user gave", got)
	}
	if got := x.Token("default/web", "uid-b"); got != "token-b" {
		t.Errorf("token of uid-b = %q, want token-b kept", got)
	}
	if got := x.Token("default/web", "uid-z"); got != "" {
		t.Errorf("token of an unknown pod = %q", got)
	}

	releaseA()
	releaseA() // twice is harmless: uid-a still has its second user
	if got := x.UIDs("default/web"); !slices.Contains(got, "uid-a") {
		t.Fatalf("UIDs = %v: uid-a left while a user still holds it", got)
	}
	releaseA2()
	if got, want := x.UIDs("default/web"), []string{"uid-b"}; !slices.Equal(got, want) {
		t.Fatalf("UIDs = %v after uid-a's last user left, want %v", got, want)
	}
	if got := x.Token("default/web", "uid-a"); got != "" {
		t.Errorf("a removed pod's token %q is still known", got)
	}
	releaseDB()
	if got := x.UIDs("default/db"); len(got) != 0 {
		t.Errorf("UIDs of default/db = %v after its pod left", got)
	}
	releaseB()
	if got := x.UIDs("default/web"); !slices.Equal(got, []string{"uid-b"}) {
		t.Errorf("UIDs = %v, want uid-b still held by its second user", got)
	}
	if x.Len() != 1 {
		t.Errorf("Len = %d, want 1", x.Len())
	}
}

func TestPodIdentitiesHoldThePodWhileTheCallerDoes(t *testing.T) {
	x := &PodIndex{}
	p := &PodIdentities{Pods: x, TTL: 10 * time.Minute}
	sel := workloadattest.Selectors{Namespace: "default", ServiceAccount: "web", PodUID: "uid-a"}
	specs, release := p.Hold(sel)
	if len(specs) != 1 || specs[0].Key != "default/web" || specs[0].TTL != 10*time.Minute {
		t.Fatalf("specs %+v, want default/web with the TTL", specs)
	}
	if got := specs[0].PodUIDs(); !slices.Equal(got, []string{"uid-a"}) {
		t.Fatalf("PodUIDs = %v while held, want [uid-a]", got)
	}
	release()
	if got := specs[0].PodUIDs(); len(got) != 0 {
		t.Errorf("PodUIDs = %v after the caller went, want none", got)
	}
	for _, bad := range []workloadattest.Selectors{
		{ServiceAccount: "web", PodUID: "uid-a"},
		{Namespace: "default", PodUID: "uid-a"},
		{Namespace: "default", ServiceAccount: "web"},
	} {
		if specs, release := p.Hold(bad); len(specs) != 0 {
			t.Errorf("Hold(%+v) = %v, want no identity", bad, specs)
		} else {
			release()
		}
	}
	if x.Len() != 0 {
		t.Errorf("index holds %d identities after every caller went", x.Len())
	}
}

func TestVolumeIdentities(t *testing.T) {
	h := newManager(t, true)
	h.ca.pod("uid-a", idWeb)
	h.ca.pod("uid-b", idWeb)
	x := &PodIndex{}
	v := &VolumeIdentities{Manager: h.m, Pods: x}

	for _, bad := range []csi.VolumeIdentity{
		{ServiceAccount: "web", PodUID: "uid-a"},
		{Namespace: "default", PodUID: "uid-a"},
		{Namespace: "default", ServiceAccount: "web"},
	} {
		if _, err := v.Track(bad, rotate.SinkFunc(func(context.Context, *rotate.Credential) error { return nil })); err == nil {
			t.Errorf("Track(%+v) succeeded, want an error naming what is missing", bad)
		}
	}

	got := make(chan *rotate.Credential, 4)
	sink := rotate.SinkFunc(func(_ context.Context, c *rotate.Credential) error { got <- c; return nil })
	untrackA, err := v.Track(csi.VolumeIdentity{Namespace: "default", ServiceAccount: "web", PodUID: "uid-a", PodToken: StaticToken("tok-a")}, sink)
	if err != nil {
		t.Fatal(err)
	}
	h.checkSVID(recv(t, got, "the volume's first credential"), idWeb)
	untrackB, err := v.Track(csi.VolumeIdentity{Namespace: "default", ServiceAccount: "web", PodUID: "uid-b"}, rotate.SinkFunc(func(context.Context, *rotate.Credential) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	if got := x.UIDs("default/web"); len(got) != 2 {
		t.Fatalf("pods of default/web = %v, want both volumes' pods", got)
	}
	if got := x.Token("default/web", "uid-a"); got != "tok-a" {
		t.Errorf("token of uid-a = %q, want the volume's", got)
	}

	untrackA()
	untrackA()
	if got := x.UIDs("default/web"); !slices.Equal(got, []string{"uid-b"}) {
		t.Fatalf("pods of default/web = %v after uid-a's volume went, want [uid-b]", got)
	}
	untrackB()
	if x.Len() != 0 {
		t.Errorf("index holds %d identities after every volume went", x.Len())
	}
	// Volumes with options get an identity of their own.
	untrackC, err := v.Track(csi.VolumeIdentity{Namespace: "default", ServiceAccount: "web", PodUID: "uid-a", TTL: 20 * time.Minute}, sink)
	if err != nil {
		t.Fatal(err)
	}
	defer untrackC()
	if got := recv(t, got, "the credential of the volume with a TTL"); got.Leaf().NotAfter.Sub(h.clk.Now()) != 20*time.Minute {
		t.Errorf("volume with ttl 20m got an SVID ending at %s", got.Leaf().NotAfter)
	}
}
