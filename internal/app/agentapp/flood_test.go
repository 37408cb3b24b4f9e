//go:build linux

package agentapp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"

	"github.com/mayfly-pki/mayfly/internal/test/childproc"
	"github.com/mayfly-pki/mayfly/internal/test/loopback"
	"github.com/mayfly-pki/mayfly/internal/test/openfiles"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// The flood: another local user opens this many connections to the
// socket, from floodProcs processes (a process may have no more open files
// than the test's hard RLIMIT_NOFILE, which an unprivileged container cannot
// raise).
const (
	floodConns  = 20000
	floodProcs  = 4
	floodUID    = 65534
	floodMax    = 256 // workloadAPI.maxConnections of the agent under test
	floodPerUID = 64  // workloadAPI.maxConnectionsPerUID
)

// TestFloodFromAnotherUID: uid 65534 opens 20,000 connections to the
// Workload API socket as fast as it can and holds them (with
// MAYFLY_FLOOD_CHURN=1 it then keeps replacing the oldest), while this test's uid
// fetches X.509-SVIDs with go-spiffe on a new connection each time. Every
// fetch must succeed within 5s, /readyz must stay OK, and the agent's
// descriptors and goroutines must stay within what its connection limits
// allow. The agent runs in this process; the flood in a child process (this
// test binary again) that drops to uid 65534.
func TestFloodFromAnotherUID(t *testing.T) {
	if testing.Short() {
		t.Skip("flood of 20,000 connections (about 30s); skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("the flood runs as a second uid (65534), which needs root; run the test as root")
	}
	health := loopback.FreeAddr(t)
	s := startStackWith(t, "10m", fmt.Sprintf("healthAddress: %s\nworkloadAPI: {maxConnections: %d, maxConnectionsPerUID: %d, handshakeTimeout: 1s}",
		health, floodMax, floodPerUID))
	// uid 65534 must reach the socket: test directories are 0700.
	for d := filepath.Dir(filepath.Dir(s.socket)); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// A fetch on a new connection each time, so that every fetch goes
	// through the accept queue the flood fills. While the queue is full,
	// connect(2) fails with EAGAIN; the client waits for the connection to
	// be ready within its deadline (gRPC redials with backoff from 1s), as
	// a go-spiffe X509Source retries its watch. The deadline allows three
	// such redials (1s, 1.6s, 2.6s with gRPC's default backoff, plus the
	// handshake on a machine shared with the rest of the suite); the log
	// reports how many fetches needed a redial and the worst latency.
	fetch := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		start := time.Now()
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+s.socket),
			workloadapi.WithDialOptions(grpc.WithDefaultCallOptions(grpc.WaitForReady(true))))
		return time.Since(start), err
	}
	readyz := func() error {
		c := &http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://" + health + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		return nil
	}
	wait.For(t, "the agent to be ready", func() bool { return readyz() == nil })

	const fetches = 300
	var before []time.Duration
	for range fetches {
		d, err := fetch()
		if err != nil {
			t.Fatalf("fetch before the flood: %v", err)
		}
		before = append(before, d)
	}
	base := sample()

	churn := os.Getenv("MAYFLY_FLOOD_CHURN") == "1"
	floodStart := time.Now()
	flood := startFlood(t, s.socket)
	var during []time.Duration
	peak := base
	var failures atomic.Int64
	// Fetch while the flood opens its 20,000 connections and then keeps
	// replacing them, at least `fetches` times.
	wait.Until(t, "the flood to open 20,000 connections and fetches to go on during it", 3*time.Minute, time.Millisecond, func(context.Context) (bool, string) {
		d, err := fetch()
		if err != nil {
			failures.Add(1)
			t.Errorf("fetch during the flood (%d opened): %v", flood.opened.Load(), err)
		}
		during = append(during, d)
		if err := readyz(); err != nil {
			t.Errorf("readyz during the flood: %v", err)
		}
		peak = peak.max(sample())
		// A churning flood never stops: a minute of it is enough to see.
		enough := len(during) >= fetches || churn && time.Since(floodStart) > time.Minute
		return flood.ready.Load() && enough, fmt.Sprintf("%d fetches, %d connections opened", len(during), flood.opened.Load())
	})
	rejected := metric(t, health, `mayfly_agent_workload_api_rejected_connections_total{reason="max_connections_per_uid"}`)
	open := metric(t, health, "mayfly_agent_workload_api_connections")
	floodTime := time.Since(floodStart)
	flood.stop(t)
	peak = peak.max(sample())
	redialed := 0
	for _, d := range during {
		if d > time.Second {
			redialed++
		}
	}

	t.Logf("flood: %d connections opened by uid %d from %d processes, %d refused at accept (per uid), %.0f open at the end",
		flood.opened.Load(), floodUID, floodProcs, int(rejected), open)
	t.Logf("fetches: before p50 %s p99 %s (%d); during p50 %s p99 %s max %s (%d, %d over 1s: a redial after EAGAIN), %d failed",
		pct(before, 50), pct(before, 99), len(before), pct(during, 50), pct(during, 99), pct(during, 100), len(during), redialed, failures.Load())
	t.Logf("test process (agent, CA, client): before fds %d goroutines %d heap %d KiB; peak during fds %d goroutines %d heap %d KiB",
		base.fds, base.goroutines, base.heap>>10, peak.fds, peak.goroutines, peak.heap>>10)

	// uid 65534 holds at most floodPerUID connections at a time, each for
	// at most the handshake timeout (1s) when it does not close them itself.
	if accepted, most := float64(flood.opened.Load())-rejected, float64(floodPerUID)*(floodTime.Seconds()+2); accepted > most && !churn {
		t.Errorf("%v connections of uid 65534 accepted in %s, more than %v", accepted, floodTime, most)
	}
	// Each accepted connection holds 2 descriptors (socket, pidfd) and at
	// most 4 goroutines (handshake, or reader, writer and keepalive).
	if limit := base.fds + 2*floodMax; peak.fds > limit {
		t.Errorf("descriptors peaked at %d, over %d (before + 2 per allowed connection)", peak.fds, limit)
	}
	if limit := base.goroutines + 4*floodMax; peak.goroutines > limit {
		t.Errorf("goroutines peaked at %d, over %d (before + 4 per allowed connection)", peak.goroutines, limit)
	}
}

type usage struct {
	fds, goroutines int
	heap            uint64
}

func sample() usage {
	entries, _ := os.ReadDir("/proc/self/fd")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return usage{fds: len(entries), goroutines: runtime.NumGoroutine(), heap: ms.HeapInuse}
}

func (u usage) max(o usage) usage {
	return usage{fds: max(u.fds, o.fds), goroutines: max(u.goroutines, o.goroutines), heap: max(u.heap, o.heap)}
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100].Round(10 * time.Microsecond)
}

// metric reads one series from the agent's /metrics.
func metric(t *testing.T, health, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no series %s in /metrics", series)
	return 0
}

// floodProcess is the children that flood the socket.
type floodProcess struct {
	procs  []*childproc.Child
	opened atomic.Int64
	ready  atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	out    strings.Builder
	once   sync.Once
}

func startFlood(t *testing.T, socket string) *floodProcess {
	t.Helper()
	f := &floodProcess{}
	counts := make([]atomic.Int64, floodProcs)
	for i := range floodProcs {
		env := []string{"MAYFLY_FLOOD_SOCKET=" + socket, "MAYFLY_FLOOD_CONNS=" + strconv.Itoa(floodConns/floodProcs)}
		if os.Getenv("MAYFLY_FLOOD_CHURN") == "1" {
			env = append(env, "MAYFLY_FLOOD_CHURN=1")
		}
		c := childproc.Start(t, childproc.Command("TestFloodHelperProcess", env...)) // stderr in stdout
		f.procs = append(f.procs, c)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			sc := bufio.NewScanner(c.Stdout)
			for sc.Scan() {
				line := sc.Text()
				if n, ok := strings.CutPrefix(line, "OPENED "); ok {
					v, _ := strconv.ParseInt(n, 10, 64)
					counts[i].Store(v)
					var sum int64
					for j := range counts {
						sum += counts[j].Load()
					}
					f.opened.Store(sum)
					if sum >= floodConns {
						f.ready.Store(true)
					}
					continue
				}
				f.mu.Lock()
				f.out.WriteString(line + "\n")
				f.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() { f.stop(t) })
	return f
}

// stop ends the flood (closing the children's stdin) and waits for them.
func (f *floodProcess) stop(t *testing.T) {
	t.Helper()
	f.once.Do(func() {
		for _, c := range f.procs {
			_ = c.Stdin.Close()
		}
		f.wg.Wait()
		for _, c := range f.procs {
			if err := c.Stop(); err != nil {
				t.Errorf("flood process: %v\n%s", err, f.out.String())
			}
		}
	})
}

// TestFloodHelperProcess is the flood of TestFloodFromAnotherUID; it runs
// only as that test's children. As root it raises its open files limit if
// need be, drops to uid 65534, opens MAYFLY_FLOOD_CONNS connections and
// holds them until its stdin closes, printing "OPENED n"; with
// MAYFLY_FLOOD_CHURN=1 it keeps replacing the oldest meanwhile.
func TestFloodHelperProcess(t *testing.T) {
	socket := childproc.Getenv(t, "MAYFLY_FLOOD_SOCKET", "TestFloodFromAnotherUID")
	n, err := strconv.Atoi(os.Getenv("MAYFLY_FLOOD_CONNS"))
	if err != nil {
		t.Fatalf("MAYFLY_FLOOD_CONNS: %v", err)
	}
	openfiles.Raise(t, uint64(n)+64, strconv.Itoa(n)+" connections")
	// Every thread drops privileges (Go applies these to all threads).
	if err := syscall.Setgroups(nil); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setgid(floodUID); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setuid(floodUID); err != nil {
		t.Fatal(err)
	}
	churn := os.Getenv("MAYFLY_FLOOD_CHURN") == "1"
	stop := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(stop) }()

	var mu sync.Mutex
	var held []net.Conn
	var opened atomic.Int64
	dial := func() net.Conn {
		for {
			c, err := net.Dial("unix", socket)
			if err == nil {
				return c
			}
			// A full backlog: the agent is behind; try again.
			if errors.Is(err, syscall.EAGAIN) {
				runtime.Gosched()
				continue
			}
			t.Errorf("dial: %v", err)
			return nil
		}
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				full := len(held) >= n
				mu.Unlock()
				if full && !churn {
					break
				}
				c := dial()
				if c == nil {
					return
				}
				mu.Lock()
				held = append(held, c)
				var old net.Conn
				if len(held) > n {
					old, held = held[0], held[1:]
				}
				mu.Unlock()
				if old != nil {
					_ = old.Close()
				}
				if v := opened.Add(1); v%1000 == 0 {
					fmt.Printf("OPENED %d\n", v)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("OPENED %d\n", opened.Load())
	<-stop
	mu.Lock()
	for _, c := range held {
		_ = c.Close()
	}
	mu.Unlock()
}
