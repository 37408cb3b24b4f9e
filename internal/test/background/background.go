// Package background runs a component's Start loop for the length of a
// test and checks how it ended.
package background

import (
	"context"
	"testing"
)

// Run calls start in a goroutine with a context that is done when the test
// ends; at cleanup it waits for start to return and fails the test, naming
// what, if it returned an error. It returns that context.
func Run(t testing.TB, what string, start func(context.Context) error) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
	return ctx
}
