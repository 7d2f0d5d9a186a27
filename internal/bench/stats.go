package bench

import (
	"math"
	"slices"
	"strconv"
	"time"
)

// median returns the median of xs (the mean of the two middle values for an even count), or
// NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile returns the p-th percentile (0 < p ≤ 100) of xs by the nearest-rank method, or NaN
// for none.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// ratio returns a/b, or NaN when either is unknown or b is zero.
func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return math.NaN()
	}
	return a / b
}

// seconds converts durations to seconds.
func seconds(ds []time.Duration) []float64 {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = d.Seconds()
	}
	return xs
}

// Num is a measured number; NaN means "not measured" and is written to JSON as null.
type Num float64

// MarshalJSON writes n, or null for NaN and infinities (which JSON cannot hold).
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, f, 'g', -1, 64), nil
}

// UnmarshalJSON reads a number, or null as NaN.
func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = Num(math.NaN())
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	*n = Num(f)
	return err
}

// Summary is a sample's median and 95th percentile.
type Summary struct {
	Median Num `json:"median"`
	P95    Num `json:"p95"` // 95th percentile, nearest rank
	N      int `json:"n"`   // sample size
}

func summarize(xs []float64) Summary {
	return Summary{Median: Num(median(xs)), P95: Num(percentile(xs, 95)), N: len(xs)}
}

func nan() float64 { return math.NaN() }
