package interleave_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/test/interleave"
)

func TestRounds(t *testing.T) {
	tests := []struct {
		name               string
		total, size, sides int
		want               []string
	}{
		{name: "no_operations_no_calls", total: 0, size: 4, sides: 2},
		{name: "a_short_last_round", total: 10, size: 4, sides: 2, want: []string{"0:4", "1:4", "1:4", "0:4", "0:2", "1:2"}},
		{name: "each_round_begins_with_the_next_side", total: 3, size: 1, sides: 3, want: []string{"0:1", "1:1", "2:1", "1:1", "2:1", "0:1", "2:1", "0:1", "1:1"}},
		{name: "one_side", total: 5, size: 2, sides: 1, want: []string{"0:2", "0:2", "0:1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			perSide := make([]int, tc.sides)
			interleave.Rounds(tc.total, tc.size, tc.sides, func(side, n int) {
				got = append(got, fmt.Sprintf("%d:%d", side, n))
				perSide[side] += n
			})
			if !slices.Equal(got, tc.want) {
				t.Errorf("calls %v, want %v", got, tc.want)
			}
			for side, n := range perSide {
				if n != tc.total {
					t.Errorf("side %d ran %d operations, want %d", side, n, tc.total)
				}
			}
		})
	}
}
