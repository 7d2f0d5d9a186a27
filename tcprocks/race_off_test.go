//go:build !race

package tcprocks

const raceEnabled = false
