//go:build race

package tcprocks

// raceEnabled: the race detector multiplies memory and CPU per goroutine several times.
const raceEnabled = true
