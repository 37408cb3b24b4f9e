package pcr

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
)

// fakePods is a PodSource with HasSynced.
type fakePods struct {
	byUID  map[string]*policy.Pod
	synced bool
}

func (f *fakePods) ByUID(uid string) (policy.Pod, bool) {
	p, ok := f.byUID[uid]
	if !ok {
		return policy.Pod{}, false
	}
	return *p, true
}
func (f *fakePods) HasSynced() bool { return f.synced }

func (f *fakePods) add(ns, name, uid string) *policy.Pod {
	p := &policy.Pod{Namespace: ns, Name: name, UID: types.UID(uid), Phase: corev1.PodRunning}
	f.byUID[uid] = p
	return p
}

// TestPodCredentials: the podCertificate series follow the pods that can
// still use their certificate, and nothing else.
func TestPodCredentials(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	const life = 24 * time.Hour
	type step struct {
		after time.Duration // since t0
		do    func(f *fakePods)
	}
	tests := []struct {
		name     string
		noCache  bool
		unsynced bool
		steps    []step
		at       time.Duration // when to scrape, since t0 (the lifetime is life+1m)
		want     bool          // web-0 exported
	}{
		{name: "exported_while_the_pod_runs", at: 20 * time.Hour, want: true},
		{name: "exported_after_expiry_while_the_pod_runs", at: 3 * life, want: true},
		{name: "dropped_when_the_pod_is_deleted", steps: []step{{time.Hour, func(f *fakePods) { delete(f.byUID, "uid-0") }}}, at: 2 * time.Hour},
		{name: "dropped_while_the_pod_terminates", steps: []step{{time.Hour, func(f *fakePods) { f.byUID["uid-0"].Terminating = true }}}, at: 2 * time.Hour},
		{name: "dropped_when_the_pod_succeeded", steps: []step{{time.Hour, func(f *fakePods) { f.byUID["uid-0"].Phase = corev1.PodSucceeded }}}, at: 2 * time.Hour},
		{name: "dropped_when_the_pod_failed", steps: []step{{time.Hour, func(f *fakePods) { f.byUID["uid-0"].Phase = corev1.PodFailed }}}, at: 2 * time.Hour},
		{name: "kept_while_the_cache_lags_behind_a_new_pod", steps: []step{{0, func(f *fakePods) { delete(f.byUID, "uid-0") }}}, at: podCacheLag - time.Second, want: true},
		{name: "dropped_when_the_new_pod_never_shows_up", steps: []step{{0, func(f *fakePods) { delete(f.byUID, "uid-0") }}}, at: podCacheLag},
		{name: "unsynced_cache_keeps_it_until_expired_a_lifetime", unsynced: true, steps: []step{{0, func(f *fakePods) { delete(f.byUID, "uid-0") }}}, at: 2 * life, want: true},
		{name: "unsynced_cache_drops_it_after_expired_a_lifetime", unsynced: true, at: 2*life + time.Minute},
		{name: "without_a_cache_kept_until_expired_a_lifetime", noCache: true, at: 2 * life, want: true},
		{name: "without_a_cache_dropped_after_expired_a_lifetime", noCache: true, at: 2*life + time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := t0
			f := &fakePods{byUID: map[string]*policy.Pod{}, synced: !tt.unsynced}
			f.add("team-a", "web-0", "uid-0")
			var src PodSource = f
			if tt.noCache {
				src = nil
			}
			c := newPodCredentials(src, func() time.Time { return now })
			reg := prometheus.NewRegistry()
			reg.MustRegister(c)
			c.record("team-a", "web-0", "uid-0", t0.Add(-time.Minute), t0.Add(life), t0.Add(life/2))
			for _, s := range tt.steps {
				now = t0.Add(s.after)
				s.do(f)
			}
			now = t0.Add(tt.at)
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string]time.Time{
				"mayfly_ca_podcertificate_issued_timestamp_seconds":  t0.Add(-time.Minute),
				"mayfly_ca_podcertificate_expiry_timestamp_seconds":  t0.Add(life),
				"mayfly_ca_podcertificate_refresh_timestamp_seconds": t0.Add(life / 2),
			} {
				v, ok := promtest.Find(mfs, name, "namespace=team-a", "pod=web-0")
				if ok != tt.want || (ok && v != float64(want.Unix())) {
					t.Errorf("%s: exported %v value %v, want exported %v value %d", name, ok, v, tt.want, want.Unix())
				}
			}
		})
	}
}

// TestPodCredentialsOnePerPod: a new certificate for a pod replaces the
// last one, also for a pod re-created under the same name.
func TestPodCredentialsOnePerPod(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	now := t0
	f := &fakePods{byUID: map[string]*policy.Pod{}, synced: true}
	f.add("team-a", "web-0", "uid-0")
	c := newPodCredentials(f, func() time.Time { return now })
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	c.record("team-a", "web-0", "uid-0", t0, t0.Add(time.Hour), t0.Add(30*time.Minute))
	now = t0.Add(30 * time.Minute)
	c.record("team-a", "web-0", "uid-0", now, now.Add(time.Hour), now.Add(30*time.Minute))
	delete(f.byUID, "uid-0")
	f.add("team-a", "web-0", "uid-1")
	now = t0.Add(40 * time.Minute)
	c.record("team-a", "web-0", "uid-1", now, now.Add(time.Hour), now.Add(30*time.Minute))

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if n := len(mf.GetMetric()); n != 1 {
			t.Errorf("%s: %d series, want 1", mf.GetName(), n)
		}
	}
	if v, _ := promtest.Find(mfs, "mayfly_ca_podcertificate_expiry_timestamp_seconds", "pod=web-0"); v != float64(now.Add(time.Hour).Unix()) {
		t.Errorf("expiry %v, want the last certificate's %d", v, now.Add(time.Hour).Unix())
	}
}

// TestPodCredentialsSweepWithoutScrapes: pods that are gone are forgotten
// at the next signing a sweep interval later, scraped or not.
func TestPodCredentialsSweepWithoutScrapes(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	now := t0
	f := &fakePods{byUID: map[string]*policy.Pod{}, synced: true}
	c := newPodCredentials(f, func() time.Time { return now })
	for i := range 100 {
		uid := "uid-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		f.add("team-a", uid, uid)
		c.record("team-a", uid, types.UID(uid), t0, t0.Add(time.Hour), t0.Add(30*time.Minute))
	}
	f.byUID = map[string]*policy.Pod{}
	f.add("team-a", "last", "uid-last")
	now = t0.Add(podCacheLag + sweepEvery)
	c.record("team-a", "last", "uid-last", now, now.Add(time.Hour), now.Add(30*time.Minute))
	c.mu.Lock()
	n := len(c.byPod)
	c.mu.Unlock()
	if n != 1 {
		t.Errorf("%d pods remembered after the sweep, want 1 (the one still running)", n)
	}
}
