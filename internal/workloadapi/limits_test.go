//go:build linux

package workloadapi

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// nobody is the uid of the second local user in the tests that run as root.
const nobody = 65534

// dialRaw connects to path without speaking.
func dialRaw(t *testing.T, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// dialAs connects to path as uid: the connect runs on an OS thread of its
// own whose effective uid is changed (the kernel records the peer's
// credentials at connect), and the thread is discarded afterwards.
func dialAs(t *testing.T, uid int, path string) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		// setresuid(2) directly changes this thread only; syscall.Setresuid
		// would change every thread of the test.
		if _, _, errno := syscall.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); errno != 0 {
			done <- result{err: errno}
			return
		}
		c, err := net.Dial("unix", path)
		done <- result{c, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("dial as uid %d: %v", uid, r.err)
	}
	t.Cleanup(func() { _ = r.c.Close() })
	return r.c
}

// needRoot skips tests that connect as a second uid.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("connecting as a second uid needs root (run the tests as root to cover the per-uid isolation)")
	}
}

// openToOthers lets every user reach the socket of env (test directories
// are 0700).
func openToOthers(t *testing.T, env *testEnv) {
	t.Helper()
	for d := filepath.Dir(env.path); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// accepted tells whether the server took c: gRPC writes its SETTINGS
// frame as soon as it has a connection, and a refused one is closed.
func accepted(t *testing.T, c net.Conn) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	n, err := c.Read(make([]byte, 9))
	switch {
	case n > 0:
		return true
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return false
	}
	t.Fatalf("neither data nor EOF from the server: %v", err)
	return false
}

func rejected(t *testing.T, env *testEnv, reason string) float64 {
	t.Helper()
	v, _ := promtest.Value(t, env.reg, "mayfly_agent_workload_api_rejected_connections_total", "reason="+reason)
	return v
}

func openConnections(t *testing.T, env *testEnv) float64 {
	t.Helper()
	v, _ := promtest.Value(t, env.reg, "mayfly_agent_workload_api_connections")
	return v
}

func TestConnectionLimits(t *testing.T) {
	t.Run("per_uid_limit_closes_the_connection_at_accept", func(t *testing.T) {
		env := startServer(t, Config{Limits: Limits{MaxConnections: 10, MaxConnectionsPerUID: 2}})
		for i := range 2 {
			if !accepted(t, dialRaw(t, env.path)) {
				t.Fatalf("connection %d refused under the limit", i+1)
			}
		}
		if accepted(t, dialRaw(t, env.path)) {
			t.Fatal("third connection of the uid accepted over a limit of 2")
		}
		if got := rejected(t, env, RejectPerUID); got != 1 {
			t.Errorf("rejected{%s} = %v, want 1", RejectPerUID, got)
		}
		if got := openConnections(t, env); got != 2 {
			t.Errorf("open connections = %v, want 2", got)
		}
	})
	t.Run("total_limit_closes_the_connection_at_accept", func(t *testing.T) {
		env := startServer(t, Config{Limits: Limits{MaxConnections: 2, MaxConnectionsPerUID: 2}})
		dialRaw(t, env.path)
		dialRaw(t, env.path)
		if accepted(t, dialRaw(t, env.path)) {
			t.Fatal("connection accepted over a total of 2")
		}
		if got := rejected(t, env, RejectTotal); got != 1 {
			t.Errorf("rejected{%s} = %v, want 1", RejectTotal, got)
		}
	})
	t.Run("closing_a_connection_frees_its_place", func(t *testing.T) {
		env := startServer(t, Config{Limits: Limits{MaxConnections: 1, MaxConnectionsPerUID: 1}})
		c := dialRaw(t, env.path)
		if !accepted(t, c) {
			t.Fatal("first connection refused")
		}
		_ = c.Close()
		wait.For(t, "the closed connection to be released", func() bool { return openConnections(t, env) == 0 })
		if !accepted(t, dialRaw(t, env.path)) {
			t.Fatal("connection refused after the previous one closed")
		}
	})
	t.Run("another_uid_is_served_while_one_is_at_its_limit", func(t *testing.T) {
		needRoot(t)
		env := startServer(t, Config{Limits: Limits{MaxConnections: 3, MaxConnectionsPerUID: 2}})
		openToOthers(t, env)
		for range 2 {
			if !accepted(t, dialAs(t, nobody, env.path)) {
				t.Fatal("connection of uid 65534 refused under its limit")
			}
		}
		if accepted(t, dialAs(t, nobody, env.path)) {
			t.Fatal("uid 65534 got a third connection")
		}
		if !accepted(t, dialRaw(t, env.path)) {
			t.Fatalf("uid %d refused while uid 65534 is at its limit", os.Getuid())
		}
		// Now at the total: refused whatever the uid.
		if accepted(t, dialRaw(t, env.path)) {
			t.Fatal("connection accepted over the total")
		}
		if p, tot := rejected(t, env, RejectPerUID), rejected(t, env, RejectTotal); p != 1 || tot != 1 {
			t.Errorf("rejected per uid %v, total %v; want 1 and 1", p, tot)
		}
	})
	t.Run("connections_queued_before_serving_are_limited_too", func(t *testing.T) {
		// They are taken from the kernel's queue in one go (acceptQueued).
		s, err := New(Config{Attestor: &fakeAttestor{}, Source: newFakeSource(), Limits: Limits{MaxConnections: 10, MaxConnectionsPerUID: 2}})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "api.sock")
		l, err := Listen(path, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		l = s.LimitListener(l)
		g := grpc.NewServer(s.ServerOptions()...)
		s.Register(g)
		t.Cleanup(g.Stop) // after the connections close: Stop waits for handshakes
		conns := make([]net.Conn, 5)
		for i := range conns {
			conns[i] = dialRaw(t, path)
		}
		go func() { _ = g.Serve(l) }()
		n := 0
		for _, c := range conns {
			if accepted(t, c) {
				n++
			}
		}
		if n != 2 {
			t.Fatalf("%d of 5 queued connections accepted, want 2", n)
		}
	})
	t.Run("a_flood_is_refused_in_batches_that_let_go_of_the_listener", func(t *testing.T) {
		env := &testEnv{reg: prometheus.NewRegistry()}
		s, err := New(Config{Attestor: &fakeAttestor{}, Source: newFakeSource(), Registerer: env.reg, Limits: Limits{MaxConnections: 1, MaxConnectionsPerUID: 1}})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "api.sock")
		raw, err := Listen(path, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		l := s.LimitListener(raw).(*limitListener)
		t.Cleanup(func() { _ = l.Close() })
		for range 5 {
			dialRaw(t, path)
		}
		c, empty, err := l.acceptQueued(queuedBatch)
		if c == nil || empty || err != nil {
			t.Fatalf("first queued connection: %v, empty %v, %v", c, empty, err)
		}
		defer c.Close()
		if c, empty, err := l.acceptQueued(2); c != nil || empty || err != nil {
			t.Fatalf("a batch of 2 refusals: got %v, empty %v, %v; want nothing, more queued", c, empty, err)
		}
		if c, empty, err := l.acceptQueued(queuedBatch); c != nil || !empty || err != nil {
			t.Fatalf("the rest: got %v, empty %v, %v; want nothing, queue empty", c, empty, err)
		}
		if got := rejected(t, env, RejectTotal); got != 4 {
			t.Errorf("rejected = %v, want 4", got)
		}
	})
	t.Run("non_unix_connection_is_refused", func(t *testing.T) {
		s, err := New(Config{Attestor: &fakeAttestor{}, Source: newFakeSource()})
		if err != nil {
			t.Fatal(err)
		}
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := s.LimitListener(tcp)
		t.Cleanup(func() { _ = l.Close() })
		go func() {
			if c, err := l.Accept(); err == nil {
				_ = c.Close()
				t.Error("a TCP connection was accepted")
			}
		}()
		c, err := net.Dial("tcp", tcp.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if accepted(t, c) {
			t.Fatal("TCP connection not closed")
		}
	})
}

func TestRefusedConnectionsAreLoggedOncePerInterval(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	logs := &logBuffer{}
	env := startServer(t, Config{Now: clock, Logger: logs.logger(), Limits: Limits{MaxConnections: 1, MaxConnectionsPerUID: 1, LogInterval: time.Minute}})
	dialRaw(t, env.path)
	refuse := func(n int) {
		for range n {
			if accepted(t, dialRaw(t, env.path)) {
				t.Fatal("connection accepted over the limit")
			}
		}
	}
	refuse(5)
	if n := strings.Count(logs.String(), "connection refused at accept"); n != 1 {
		t.Fatalf("%d log lines for 5 refused connections within the interval, want 1:\n%s", n, logs)
	}
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	refuse(1)
	out := logs.String()
	if n := strings.Count(out, "connection refused at accept"); n != 2 {
		t.Fatalf("%d log lines after the interval, want 2:\n%s", n, out)
	}
	// The second line counts the 4 refused silently and itself.
	if !strings.Contains(out, "refused_since_last_line=5") || !strings.Contains(out, "reason="+RejectTotal) {
		t.Errorf("second line does not count the silent refusals:\n%s", out)
	}
	if got := rejected(t, env, RejectTotal); got != 6 {
		t.Errorf("rejected = %v, want 6: the metric counts every connection", got)
	}
}

func TestLimitsValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits Limits
		want   string
	}{
		{"negative_total", Limits{MaxConnections: -1}, "MaxConnections: must not be negative"},
		{"negative_per_uid", Limits{MaxConnectionsPerUID: -1}, "MaxConnectionsPerUID: must not be negative"},
		{"per_uid_over_total", Limits{MaxConnections: 2, MaxConnectionsPerUID: 3}, "MaxConnectionsPerUID: must not exceed MaxConnections (2)"},
		{"negative_message_size", Limits{MaxRecvMsgSize: -1}, "MaxRecvMsgSize"},
		{"negative_timeout", Limits{IdleTimeout: -time.Second}, "timeouts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{Attestor: &fakeAttestor{}, Source: newFakeSource(), Limits: tc.limits})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// h2Client speaks HTTP/2 to the server frame by frame, so that it can do
// what gRPC clients do not: ignore the server's stream and header limits,
// or never call.
type h2Client struct {
	t  *testing.T
	c  net.Conn
	fr *http2.Framer
}

func dialH2(t *testing.T, path string) *h2Client {
	t.Helper()
	c := dialRaw(t, path)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return &h2Client{t: t, c: c, fr: fr}
}

// call opens stream id on FetchX509SVID with the security header, extra
// headers, and the (empty) request, which ends the client's side.
func (h *h2Client) call(id uint32, extra ...hpack.HeaderField) {
	h.t.Helper()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/SpiffeWorkloadAPI/FetchX509SVID"}, {Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		{Name: SecurityHeader, Value: "true"},
	}, extra...) {
		if err := enc.WriteField(f); err != nil {
			h.t.Fatal(err)
		}
	}
	const maxFrame = 16 << 10
	b := block.Bytes()
	first := b[:min(len(b), maxFrame)]
	b = b[len(first):]
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(b) == 0}); err != nil {
		h.t.Fatalf("HEADERS: %v", err)
	}
	for len(b) > 0 {
		chunk := b[:min(len(b), maxFrame)]
		b = b[len(chunk):]
		if err := h.fr.WriteContinuation(id, len(b) == 0, chunk); err != nil {
			// The server may close the connection before all is sent.
			return
		}
	}
	_ = h.fr.WriteData(id, true, []byte{0, 0, 0, 0, 0})
}

// next returns the next frame other than SETTINGS, PING and WINDOW_UPDATE
// (which it answers), or the read error; it gives up after 10s.
func (h *h2Client) next() (http2.Frame, error) {
	_ = h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = h.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = h.fr.WritePing(true, f.Data)
			}
		case *http2.WindowUpdateFrame:
		default:
			return f, nil
		}
	}
}

func TestStreamsPerConnectionAreLimited(t *testing.T) {
	env := startServer(t, Config{Limits: Limits{MaxStreamsPerConnection: 2}})
	env.source.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
	h := dialH2(t, env.path)
	const streams = 50
	for i := range streams {
		h.call(uint32(2*i + 1))
	}
	served, refused := map[uint32]bool{}, 0
	for len(served)+refused < streams {
		f, err := h.next()
		if err != nil {
			t.Fatalf("after %d served and %d refused streams: %v", len(served), refused, err)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			if f.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("stream %d reset with %v, want REFUSED_STREAM", f.StreamID, f.ErrCode)
			}
			refused++
		case *http2.DataFrame:
			served[f.StreamID] = true
		}
	}
	if len(served) != 2 || env.attestor.calls.Load() != 2 {
		t.Fatalf("%d streams served, %d attested, want 2 (the limit); %d refused", len(served), env.attestor.calls.Load(), refused)
	}
}

func TestOversizedHeadersAreRefused(t *testing.T) {
	env := startServer(t, Config{})
	env.source.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
	t.Run("headers_within_the_limit_are_served", func(t *testing.T) {
		h := dialH2(t, env.path)
		h.call(1, hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", 4<<10)})
		for {
			f, err := h.next()
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := f.(*http2.DataFrame); ok {
				return
			}
			if rst, ok := f.(*http2.RSTStreamFrame); ok {
				t.Fatalf("4 KiB of headers refused: %v", rst.ErrCode)
			}
		}
	})
	for _, tc := range []struct {
		name  string
		extra []hpack.HeaderField
	}{
		{"one_large_header", []hpack.HeaderField{{Name: "x-big", Value: strings.Repeat("a", 64<<10)}}},
		{"8_MiB_in_many_headers", func() []hpack.HeaderField {
			var f []hpack.HeaderField
			v := strings.Repeat("b", 1<<10)
			for i := range 8 << 10 {
				f = append(f, hpack.HeaderField{Name: "x-pad-" + string(rune('a'+i%26)), Value: v})
			}
			return f
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := env.attestor.calls.Load()
			h := dialH2(t, env.path)
			h.call(1, tc.extra...)
			// The stream is reset or the connection closed; it never
			// reaches the handler.
			for {
				f, err := h.next()
				if err != nil {
					if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
						break
					}
					t.Fatalf("neither a reset nor a close: %v", err)
				}
				if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == 1 {
					break
				}
				if _, ok := f.(*http2.DataFrame); ok {
					t.Fatal("oversized headers served")
				}
				if _, ok := f.(*http2.GoAwayFrame); ok {
					break
				}
			}
			if got := env.attestor.calls.Load(); got != before {
				t.Errorf("the handler ran %d times", got-before)
			}
		})
	}
}

// waitClosed reads from c until the server closes it and returns how long
// that took; it fails after 10s.
func waitClosed(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(10 * time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return time.Since(start)
			}
			t.Fatalf("connection not closed by the server: %v", err)
		}
	}
}

func TestSilentConnectionsAreClosed(t *testing.T) {
	const timeout = 300 * time.Millisecond
	t.Run("no_handshake", func(t *testing.T) {
		env := startServer(t, Config{Limits: Limits{HandshakeTimeout: timeout}})
		c := dialRaw(t, env.path)
		if took := waitClosed(t, c); took < timeout/2 {
			t.Errorf("closed after %s, before the handshake timeout %s", took, timeout)
		}
		wait.For(t, "the connection to be released", func() bool { return openConnections(t, env) == 0 })
	})
	t.Run("no_call_after_the_handshake", func(t *testing.T) {
		env := startServer(t, Config{Limits: Limits{IdleTimeout: timeout}})
		env.source.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
		// A client with an open stream from before is busy, not idle.
		stream, err := rawClient(t, env.path).FetchX509SVID(withHeader(testContext(t)), &workload.X509SVIDRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		h := dialH2(t, env.path)
		for {
			f, err := h.next()
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
					break
				}
				t.Fatalf("idle connection not closed: %v", err)
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok && string(ga.DebugData()) != "max_idle" {
				t.Errorf("GOAWAY %q, want max_idle", ga.DebugData())
			}
		}
		env.source.set("a", issue(t, env.ca, "spiffe://example.org/ns/default/sa/w"))
		env.source.notify()
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("the busy connection was closed too: %v", err)
		}
	})
}
