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

// JWTFiles keeps a JWT-SVID for Audience in a file (jwt.token, mode 0600)
// in a directory per identity, for programs that read a token file rather
// than call the Workload API. Each file is re-written at the token's
// half-life, when the cache obtains the next token; a token that cannot be
// obtained is retried with backoff, the file keeping the last one.
type JWTFiles struct {
	Cache    *JWTCache
	Clock    rotate.Clock
	Audience []string
	Logger   *slog.Logger

	// ctx bounds every writer: they stop with it.
	ctx     context.Context
	mu      sync.Mutex
	writers map[string]jwtWriter
}

type jwtWriter struct {
	dir    string
	cancel context.CancelFunc
	done   chan struct{}
}

// NewJWTFiles returns token file writers that run until ctx is done.
func NewJWTFiles(ctx context.Context, cache *JWTCache, clock rotate.Clock, audience []string, log *slog.Logger) *JWTFiles {
	return &JWTFiles{Cache: cache, Clock: clock, Audience: audience, Logger: log, ctx: ctx, writers: map[string]jwtWriter{}}
}

// Set makes the writers run for exactly specs (by key), each writing into
// dirs[key]; writers of keys no longer there stop (their file stays until
// it expires, as the certificate files do).
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
			w.cancel()
			<-w.done
		}
		ctx, cancel := context.WithCancel(f.ctx)
		w := jwtWriter{dir: dir, cancel: cancel, done: make(chan struct{})}
		f.writers[spec.Key] = w
		go func() {
			defer close(w.done)
			f.run(ctx, spec, dir)
		}()
	}
	for k, w := range f.writers {
		if !next[k] {
			w.cancel()
			<-w.done
			delete(f.writers, k)
		}
	}
}

// Stop stops every writer and waits for them.
func (f *JWTFiles) Stop() { f.Set(nil, nil) }

// Retry bounds of a token that could not be obtained or written.
const (
	jwtFileRetryMin = time.Second
	jwtFileRetryMax = 30 * time.Second
)

func (f *JWTFiles) run(ctx context.Context, spec Spec, dir string) {
	path := filepath.Join(dir, JWTFileName)
	backoff := jwtFileRetryMin
	last := ""
	for {
		next, err := f.write(ctx, spec, path, &last)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if f.Logger != nil {
				f.Logger.Error("JWT-SVID token file not renewed; retrying", "spiffe_id", spec.SpiffeID, "file", path, "retry_in", backoff, "error", err)
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
func (f *JWTFiles) write(ctx context.Context, spec Spec, path string, last *string) (time.Time, error) {
	_, token, refresh, err := f.Cache.FetchRefresh(ctx, spec, f.Audience)
	if err != nil {
		return time.Time{}, err
	}
	if token != *last {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return time.Time{}, err
		}
		if err := atomicfile.WriteFile(path, []byte(token), 0o600); err != nil {
			return time.Time{}, err
		}
		*last = token
	}
	return refresh, nil
}
