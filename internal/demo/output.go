package demo

import (
	"fmt"
	"log"
	"os"
	"time"
)

// Changes prints what each place of a demo shows (a directory's ca.crt,
// the root above a socket client's leaf) once when it changes, stamped
// t=<unix seconds> for the demo's timings. The key is the place and what
// it shows; the value is what was printed last.
type Changes map[string]string

// Print prints "<time> [path] what value  t=<unix seconds>" unless value is
// what path last showed for what.
func (c Changes) Print(now time.Time, path, what, value string) {
	key := path + " " + what
	if c[key] == value {
		return
	}
	c[key] = value
	fmt.Printf("%s [%s] %s %s  t=%.3f\n", now.Format("15:04:05.000"), path, what, value, float64(now.UnixMilli())/1000)
}

// Finish ends a demo command that counted handshakes: it exits 1 with err
// when the command could not run, else prints "<name>: N handshakes, M
// failed" (make demo and hack/demok8s read that line) and exits 1 when
// any failed.
func Finish(name string, ok, failed int, err error) {
	if err != nil {
		log.Fatalf("%s: %v", name, err)
	}
	fmt.Printf("%s: %d handshakes, %d failed\n", name, ok+failed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
