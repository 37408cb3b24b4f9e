package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

// TestJWTFiles: the token file appears (0600, in a 0700 directory made for
// it), is re-written at the token's half-life and not before, keeps the
// last token while the CA fails and is renewed once it answers, and its
// writer stops when its identity goes.
func TestJWTFiles(t *testing.T) {
	clock, ca, cache := newJWTCacheAtEpoch(t)
	dir := filepath.Join(t.TempDir(), "out", "web")
	path := filepath.Join(dir, JWTFileName)
	files := NewJWTFiles(cache, clock, []string{"vault", "api"}, nil)
	t.Cleanup(files.Close)
	web := Spec{Key: "web", SpiffeID: "spiffe://example.org/web"}
	files.Set([]Spec{web}, map[string]string{"web": dir})

	read := func() string {
		raw, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return string(raw)
	}
	wait.For(t, "jwt.token written", func() bool { return read() != "" })
	first := read()
	filemode.Want(t, path, 0o600)
	filemode.Want(t, dir, fs.ModeDir|0o700)
	p, err := jwtsvid.Parse(first)
	if err != nil || p.Subject.String() != web.SpiffeID {
		t.Fatalf("jwt.token: %v, sub %v", err, p)
	}

	// The writer sleeps until the half-life (2m30s of 5m).
	clock.BlockUntil(1)
	if at, _ := clock.NextDeadline(); !at.Equal(jwtEpoch.Add(150 * time.Second)) {
		t.Fatalf("next write at %s, want the half-life %s", at, jwtEpoch.Add(150*time.Second))
	}
	clock.Advance(150*time.Second - time.Millisecond)
	if read() != first || ca.calls.Load() != 1 {
		t.Fatalf("re-written before the half-life (%d CA calls)", ca.calls.Load())
	}
	clock.Advance(time.Millisecond)
	wait.For(t, "jwt.token replaced at the half-life", func() bool { return read() != first })
	second := read()

	// The CA fails: the file keeps the token, retried after 1s, 2s...
	clock.BlockUntil(1)
	ca.mu.Lock()
	ca.fail = []error{errors.New("CA down"), errors.New("CA down")}
	ca.mu.Unlock()
	clock.Advance(150 * time.Second)
	wait.For(t, "the first retry armed", func() bool {
		at, ok := clock.NextDeadline()
		return ok && at.Equal(clock.Now().Add(time.Second))
	})
	if read() != second {
		t.Fatal("the file changed while the CA failed")
	}
	clock.Advance(time.Second)
	wait.For(t, "the second retry armed", func() bool {
		at, ok := clock.NextDeadline()
		return ok && at.Equal(clock.Now().Add(2*time.Second))
	})
	clock.Advance(2 * time.Second)
	wait.For(t, "jwt.token renewed once the CA answers", func() bool { return read() != second })

	// The identity goes: its writer stops (no timer left, no CA call).
	clock.BlockUntil(1)
	files.Set(nil, nil)
	if n := clock.Waiters(); n != 0 {
		t.Fatalf("%d timers left after the writer stopped", n)
	}
	calls := ca.calls.Load()
	clock.Advance(time.Hour)
	if ca.calls.Load() != calls {
		t.Fatal("a stopped writer asked the CA")
	}
}

// TestJWTFilesClose: Close stops the writers of Set and of Keep, and waits
// for them; a writer asked for after it starts nothing.
func TestJWTFilesClose(t *testing.T) {
	clock, ca, cache := newJWTCacheAtEpoch(t)
	base := t.TempDir()
	files := NewJWTFiles(cache, clock, []string{"vault"}, nil)
	web := Spec{Key: "web", SpiffeID: "spiffe://example.org/web"}
	files.Set([]Spec{web}, map[string]string{"web": filepath.Join(base, "web")})
	kept := filepath.Join(base, "volume", JWTFileName)
	stopKept := files.Keep(web, []string{"api"}, JWTFile{Path: kept, MakeDir: true})
	clock.BlockUntil(2) // both wrote and sleep until the half-life

	files.Close()
	if n := clock.Waiters(); n != 0 {
		t.Fatalf("%d timers left after Close", n)
	}
	stopKept() // stopping a closed writer again returns at once
	late := filepath.Join(base, "late", JWTFileName)
	files.Keep(web, []string{"api"}, JWTFile{Path: late, MakeDir: true})()
	calls := ca.calls.Load()
	clock.Advance(time.Hour)
	if ca.calls.Load() != calls {
		t.Fatal("a writer asked the CA after Close")
	}
	if _, err := os.Stat(late); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a writer asked for after Close wrote its file: %v", err)
	}
}
