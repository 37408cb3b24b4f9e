package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// JWTFileName is the file a token file writer keeps a JWT-SVID in.
const JWTFileName = "jwt.token"

// JWTFiles keeps JWT-SVIDs in token files, for programs that read a token
// file rather than call the Workload API: jwt.token (mode 0600) in a
// directory per identity for Audience (writeDir, Set), and the files of CSI
// volumes (Keep). Each file is re-written at the token's half-life, when
// the cache obtains the next token; a token that cannot be obtained is
// retried with backoff, the file keeping the last one. Close stops every
// writer.
type JWTFiles struct {
	Cache    *JWTCache
	Clock    rotate.Clock
	Audience []string
	Logger   *slog.Logger

	mu      sync.Mutex           // guards writers (Set's)
	writers map[string]jwtWriter // Set's writers, by identity key

	runMu   sync.Mutex
	closed  bool
	running map[*jwtRun]struct{} // every writer Keep started and not yet stopped
}

// jwtRun is one running writer: cancel stops it, done is closed once it has.
type jwtRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

type jwtWriter struct {
	dir  string
	stop func()
}

// JWTFile says where and how a writer keeps a token.
type JWTFile struct {
	// Path is the token file.
	Path string
	// MakeDir creates the file's directory (0700) when it is missing;
	// otherwise a missing directory is an error, retried.
	MakeDir bool
	// Group, when set, gives the file to this group with mode 0640 (a
	// pod's fsGroup, as the key of a CSI volume); else it is 0600.
	Group *int64
	// Written, when set, is told the result of every attempt to obtain
	// and write the token (nil: the file holds a token valid past now).
	Written func(error)
}

// NewJWTFiles returns token file writers; they run until stopped or Close.
func NewJWTFiles(cache *JWTCache, clock rotate.Clock, audience []string, log *slog.Logger) *JWTFiles {
	return &JWTFiles{Cache: cache, Clock: clock, Audience: audience, Logger: log, writers: map[string]jwtWriter{}, running: map[*jwtRun]struct{}{}}
}

// Set makes the writers run for exactly specs (by key), each writing
// jwt.token for Audience into dirs[key]; writers of keys no longer there
// stop (their file stays until it expires, as the certificate files do).
func (f *JWTFiles) Set(specs []Spec, dirs map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := map[string]bool{}
	for _, spec := range specs {
		dir := dirs[spec.Key]
		next[spec.Key] = true
		if w, ok := f.writers[spec.Key]; ok && w.dir == dir {
			continue
		} else if ok {
			w.stop()
		}
		stop := f.Keep(spec, f.Audience, JWTFile{Path: filepath.Join(dir, JWTFileName), MakeDir: true})
		f.writers[spec.Key] = jwtWriter{dir: dir, stop: stop}
	}
	for k, w := range f.writers {
		if !next[k] {
			w.stop()
			delete(f.writers, k)
		}
	}
}

// Keep starts a writer that keeps a JWT-SVID of spec for audience in file
// until stop (or Close), which waits for a write in progress: no write
// starts after it returns. After Close, Keep starts nothing.
func (f *JWTFiles) Keep(spec Spec, audience []string, file JWTFile) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &jwtRun{cancel: cancel, done: make(chan struct{})}
	f.runMu.Lock()
	if f.closed {
		f.runMu.Unlock()
		cancel()
		return func() {}
	}
	f.running[r] = struct{}{}
	f.runMu.Unlock()
	go func() {
		defer close(r.done)
		f.run(ctx, spec, audience, file)
	}()
	return func() {
		r.cancel()
		<-r.done
		f.runMu.Lock()
		delete(f.running, r)
		f.runMu.Unlock()
	}
}

// Close stops every writer (Set's and Keep's) and waits for them; Keep
// starts none after it.
func (f *JWTFiles) Close() {
	f.runMu.Lock()
	f.closed = true
	running := make([]*jwtRun, 0, len(f.running))
	for r := range f.running {
		running = append(running, r)
	}
	clear(f.running)
	f.runMu.Unlock()
	for _, r := range running {
		r.cancel()
	}
	for _, r := range running {
		<-r.done
	}
}

// Retry bounds of a token that could not be obtained or written.
const (
	jwtFileRetryMin = time.Second
	jwtFileRetryMax = 30 * time.Second
)

func (f *JWTFiles) run(ctx context.Context, spec Spec, audience []string, file JWTFile) {
	backoff := jwtFileRetryMin
	last := ""
	for {
		next, err := f.write(ctx, spec, audience, file, &last)
		if ctx.Err() != nil {
			return
		}
		if file.Written != nil {
			file.Written(err)
		}
		if err != nil {
			if f.Logger != nil {
				f.Logger.Error("JWT-SVID token file not renewed; retrying", "spiffe_id", spec.SpiffeID, "identity", spec.Key, "file", file.Path, "retry_in", backoff, "error", err)
			}
			next = f.Clock.Now().Add(backoff)
			backoff = min(2*backoff, jwtFileRetryMax)
		} else {
			backoff = jwtFileRetryMin
		}
		t := rotate.NewTimerAt(f.Clock, next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// write obtains the token (from the cache before its half-life), writes it
// if it is not the one in the file already, and returns its half-life.
func (f *JWTFiles) write(ctx context.Context, spec Spec, audience []string, file JWTFile, last *string) (time.Time, error) {
	_, token, refresh, err := f.Cache.FetchRefresh(ctx, spec, audience)
	if err != nil {
		return time.Time{}, err
	}
	if token != *last {
		if file.MakeDir {
			if err := os.MkdirAll(filepath.Dir(file.Path), 0o700); err != nil {
				return time.Time{}, err
			}
		}
		mode := os.FileMode(0o600)
		if file.Group != nil {
			mode = 0o640
		}
		if err := atomicfile.WriteFileGroup(file.Path, []byte(token), mode, file.Group); err != nil {
			return time.Time{}, err
		}
		*last = token
	}
	return refresh, nil
}
