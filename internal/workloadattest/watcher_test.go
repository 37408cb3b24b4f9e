package workloadattest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/test/background"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

const (
	regsA = "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: 1}\n"
	regsB = "registrations:\n  - spiffeID: spiffe://example.org/b\n    selectors: {uid: 2}\n"
)

type watcherEnv struct {
	t       *testing.T
	path    string
	clock   *rotate.FakeClock
	w       *RegistrationWatcher
	changes chan []Registration
	errs    chan error
}

func startWatcher(t *testing.T, initial string) *watcherEnv {
	t.Helper()
	e := &watcherEnv{
		t:       t,
		path:    filepath.Join(t.TempDir(), "registrations.yaml"),
		clock:   rotate.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		changes: make(chan []Registration, 10),
		errs:    make(chan error, 10),
	}
	e.write(initial)
	w, err := NewRegistrationWatcher(e.path, testTD, 10*time.Second, e.clock)
	if err != nil {
		t.Fatal(err)
	}
	w.OnChange = func(r []Registration) { e.changes <- r }
	w.OnError = func(err error) { e.errs <- err }
	e.w = w
	background.Run(t, "Start", w.Start)
	e.clock.BlockUntil(1)
	return e
}

func (e *watcherEnv) write(content string) {
	e.t.Helper()
	if err := os.WriteFile(e.path, []byte(content), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// poll lets one poll interval pass and waits until the watcher has handled
// it and waits on its next timer.
func (e *watcherEnv) poll() {
	e.t.Helper()
	e.clock.Advance(10 * time.Second)
	e.clock.BlockUntil(1)
}

func (e *watcherEnv) ids() string {
	var ids []string
	for _, r := range e.w.Registrations() {
		ids = append(ids, r.SPIFFEID.Path())
	}
	return strings.Join(ids, ",")
}

// wantIDs fails the test unless the registrations held are want
// (their paths, comma-separated); when says at which step.
func (e *watcherEnv) wantIDs(when, want string) {
	e.t.Helper()
	if got := e.ids(); got != want {
		e.t.Fatalf("%s: registrations %q, want %q", when, got, want)
	}
}

func TestWatcherReloadsAChangedFile(t *testing.T) {
	e := startWatcher(t, regsA)
	e.wantIDs("initial", "/a")
	e.write(regsB)
	e.poll()
	e.wantIDs("after the change", "/b")
	if got := <-e.changes; len(got) != 1 || got[0].ID != "spiffe://example.org/b" {
		t.Errorf("OnChange got %+v", got)
	}
	if err := e.w.LastError(); err != nil {
		t.Errorf("LastError = %v", err)
	}
}

func TestWatcherIgnoresAnUnchangedFile(t *testing.T) {
	e := startWatcher(t, regsA)
	e.poll()
	e.poll()
	if len(e.changes) != 0 || len(e.errs) != 0 {
		t.Errorf("unchanged file reported %d changes, %d errors", len(e.changes), len(e.errs))
	}
}

func TestWatcherKeepsTheLastGoodSetOnAnInvalidFile(t *testing.T) {
	e := startWatcher(t, regsA)
	e.write("registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {}\n")
	e.poll()
	e.wantIDs("after an invalid file", "/a")
	err := e.w.LastError()
	if err == nil || !strings.Contains(err.Error(), "registrations[0].selectors") || !strings.Contains(err.Error(), "keeping the last good") {
		t.Fatalf("LastError = %v", err)
	}
	if got := <-e.errs; got.Error() != err.Error() {
		t.Errorf("OnError got %v, LastError %v", got, err)
	}
	e.poll() // the same bad content is not reported again
	if len(e.errs) != 0 {
		t.Errorf("the same invalid file was reported again")
	}

	e.write(regsB)
	e.poll()
	e.wantIDs("after a fixed file", "/b")
	if err := e.w.LastError(); err != nil {
		t.Errorf("LastError after a good reload = %v", err)
	}
}

func TestWatcherKeepsTheLastGoodSetWhileTheFileIsMissing(t *testing.T) {
	e := startWatcher(t, regsA)
	if err := os.Remove(e.path); err != nil {
		t.Fatal(err)
	}
	e.poll()
	e.wantIDs("while missing", "/a")
	if err := e.w.LastError(); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("LastError = %v", err)
	}
	e.write(regsA) // the same content comes back: the error clears
	e.poll()
	if err := e.w.LastError(); err != nil {
		t.Errorf("LastError after the file came back = %v", err)
	}
}

func TestWatcherKeepsTheLastGoodSetOnATruncatedFile(t *testing.T) {
	e := startWatcher(t, regsA)
	e.write("")
	e.poll()
	e.wantIDs("after truncation", "/a")
	if e.w.LastError() == nil {
		t.Error("no error for an empty file")
	}
}

func TestNewRegistrationWatcherFailsOnABadFirstFile(t *testing.T) {
	dir := t.TempDir()
	clock := rotate.NewFakeClock(time.Now())
	if _, err := NewRegistrationWatcher(filepath.Join(dir, "missing.yaml"), testTD, time.Second, clock); err == nil {
		t.Error("missing file accepted")
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("registrations: [{spiffeID: x}]"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRegistrationWatcher(bad, testTD, time.Second, clock); err == nil || !strings.Contains(err.Error(), "registrations[0].spiffeID") {
		t.Errorf("bad file: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte(regsA+strings.Repeat("#", MaxRegistrationsFileSize)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRegistrationWatcher(big, testTD, time.Second, clock); err == nil || !strings.Contains(err.Error(), big+": longer than") {
		t.Errorf("file beyond the limit: %v, want an error naming it and the limit", err)
	}
	if _, err := NewRegistrationWatcher(dir, testTD, time.Second, clock); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v, want it refused as not a regular file", err)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(regsA), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRegistrationWatcher(good, testTD, 0, clock); err == nil {
		t.Error("zero interval accepted")
	}
}
