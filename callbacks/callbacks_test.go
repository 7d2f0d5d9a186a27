package callbacks

import (
	"testing"
	"time"
)

func TestPolicyDefaults(t *testing.T) {
	p := Policy{}.WithDefaults()
	if p.HeartbeatInterval != time.Second || p.MissedHeartbeats != 3 || p.ReconnectTimeout != 72*time.Hour || p.RefusalGrace != time.Minute {
		t.Fatalf("defaults %+v", p)
	}
	if q := (Policy{ReconnectTimeout: NoTimeout}).WithDefaults(); q.ReconnectTimeout >= 0 {
		t.Fatalf("NoTimeout became %v", q.ReconnectTimeout)
	}
}

func TestBackoff(t *testing.T) {
	p := Policy{BackoffInitial: 100 * time.Millisecond, BackoffMax: time.Minute}
	prev := time.Duration(0)
	for a := 1; a < 30; a++ {
		d := p.Backoff(a, 0)
		if d > FastRetryMax || d < prev {
			t.Fatalf("attempt %d in the first minute: %v (previous %v)", a, d, prev)
		}
		prev = d
	}
	if d := p.Backoff(30, 2*time.Minute); d != time.Minute {
		t.Fatalf("capped backoff after the first minute: %v", d)
	}
	if d := p.Backoff(1, 2*time.Minute); d != 100*time.Millisecond {
		t.Fatalf("first backoff %v", d)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Suspended: "suspended", Reconnecting: "reconnecting", Resumed: "resumed", Closed: "closed", TimedOut: "timed out"} {
		if k.String() != want {
			t.Errorf("%d: %q", k, k.String())
		}
	}
}
