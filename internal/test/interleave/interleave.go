// Package interleave runs the sides of a ratio benchmark in alternating
// rounds of the same run, so that the load of a shared machine falls on
// every side alike and their ratio holds where absolute figures do not.
// Only benchmarks import it.
package interleave

// Rounds splits total operations into rounds of at most size and, in each
// round, calls run(side, n) once for every side in 0..sides-1 with the
// round's n operations, beginning with the next side each round (so that
// no side always runs first, on a cooler cache or a quieter machine).
func Rounds(total, size, sides int, run func(side, n int)) {
	for round, done := 0, 0; done < total; round++ {
		n := min(size, total-done)
		done += n
		for i := range sides {
			run((round+i)%sides, n)
		}
	}
}
