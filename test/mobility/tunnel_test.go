//go:build linux

package mobility

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rockudp/rockudp/internal/testwait"
	"github.com/rockudp/rockudp/test/netlab"
)

// The tunnel scenario (issue 7): a real DNS server (BIND 9) behind `rockudp tunnel server`,
// and dig on the client host asking it through `rockudp tunnel client`, once a second, while
// the client's address changes and then its link drops everything for 30 s.
const (
	tunMaxAge  = 10 * time.Second // the client's --max-age for its queries
	tunOutage  = 30 * time.Second
	tunDigWait = 45 // seconds dig waits for an answer: longer than the outage
	tunZone    = "tunnel.test."
	tunAnswer  = "192.0.2.99"
)

// dnsQuery is one dig run.
type dnsQuery struct {
	sent, done time.Time
	answered   bool
	qtime      time.Duration // dig's own "Query time"
	out        string
}

var digQueryTime = regexp.MustCompile(`Query time: (\d+) msec`)

// dig asks the tunnel client at 127.0.0.1:5353 in host for www.tunnel.test once (one
// datagram, no retry).
func dig(host *netlab.Host, bin string) dnsQuery {
	q := dnsQuery{sent: time.Now()}
	out, _ := host.Command(context.Background(), bin, "@127.0.0.1", "-p", "5353", "www."+tunZone, "A",
		"+tries=1", fmt.Sprintf("+time=%d", tunDigWait), "+noall", "+answer", "+stats").CombinedOutput()
	q.done, q.out = time.Now(), string(out)
	q.answered = strings.Contains(q.out, tunAnswer)
	if m := digQueryTime.FindStringSubmatch(q.out); m != nil {
		ms, _ := strconv.Atoi(m[1])
		q.qtime = time.Duration(ms) * time.Millisecond
	}
	return q
}

// TestTunnelDNS runs BIND 9 behind `rockudp tunnel server` and dig through `rockudp tunnel
// client --max-age 10s` across the client's address change and a 30-second link loss. Every
// query outside the outage is answered. A query sent during the outage is either answered
// after it, no more than the max-age late (plus the service's own time), or dropped by the
// tunnel, and then counted by the tunnel's metrics: the drop counters of both ends add up to
// the unanswered queries.
func TestTunnelDNS(t *testing.T) {
	t.Parallel() // beside TestLocator, once TestMobility has finished
	w := newWorld(t, true)
	digBin := needProgram(t, "dig", "bind9-dnsutils")
	bin := buildRockudp(t)
	startNamed(t, w.server, "127.0.0.1:53", tunZone, "ns IN A 127.0.0.1\nwww IN A "+tunAnswer+"\n", nil)
	psk := t.TempDir() + "/rockudp.psk"
	if out, err := exec.Command(bin, "keygen", "-o", psk).CombinedOutput(); err != nil {
		t.Fatalf("rockudp keygen: %v\n%s", err, out)
	}
	srv := startProgram(t, w.server, bin, "tunnel", "server", "--listen", ":7001", "--to", "127.0.0.1:53",
		"--psk-file", psk, "--metrics", "127.0.0.1:9100")
	srv.waitOutput(t, "tunnel server on")
	cli := startProgram(t, w.client, bin, "tunnel", "client", "--listen", "127.0.0.1:5353", "--server", "198.51.100.2:7001",
		"--psk-file", psk, "--max-age", tunMaxAge.String(), "--metrics", "127.0.0.1:9100")
	cli.waitOutput(t, "tunnel client on")
	if q := dig(w.client, digBin); !q.answered {
		t.Fatalf("no answer through the tunnel before any fault:\n%s", q.out)
	}

	// One query a second from now on, each from a new source port (a new flow).
	var (
		mu      sync.Mutex
		queries []dnsQuery
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() }) // also when the test fails early
	t.Cleanup(halt)
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Go(func() {
				q := dig(w.client, digBin)
				mu.Lock()
				queries = append(queries, q)
				mu.Unlock()
			})
		}
	})
	answeredAfter := func(since time.Time) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, q := range queries {
			if q.answered && q.sent.After(since) {
				return true
			}
		}
		return false
	}
	pollUntil := func(what string, cond func() bool) {
		t.Helper()
		testwait.Within(t, 2*time.Minute, what, func() error {
			if !cond() {
				return errors.New("none yet")
			}
			return nil
		})
	}

	// The client's address changes (the old one is removed first).
	pollUntil("answer before the address change", func() bool { return answeredAfter(time.Now().Add(-2 * time.Second)) })
	changed := time.Now()
	old := w.clientLink.Prefixes()[0]
	if err := w.clientLink.ChangeAddr(old, netip.MustParsePrefix("192.0.2.130/25")); err != nil {
		t.Fatal(err)
	}
	pollUntil("answer to a query sent after the address change", func() bool { return answeredAfter(changed) })

	// The link drops everything for 30 s.
	pollUntil("answer before the outage", func() bool { return answeredAfter(time.Now().Add(-2 * time.Second)) })
	blocked := time.Now()
	if err := w.clientLink.BlockAll(true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(tunOutage)
	if err := w.clientLink.BlockAll(false); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	pollUntil("answer to a query sent after the outage", func() bool { return answeredAfter(restored) })
	time.Sleep(3 * time.Second) // a few more queries on the mended link
	halt()

	// The first answer after the outage tells the recovery time. Every query sent outside
	// the outage is answered. The outage, for a query, lasts from a second before the link
	// broke (that query may have been on the link) until that first answer (a query sent
	// after the link was mended but before the rock resumed waited like the others).
	var (
		during, answeredDuring, lost int
		firstAnswer                  time.Time
		worstLate, worstAtChange     time.Duration
	)
	for _, q := range queries {
		if q.answered && q.done.After(restored) && (firstAnswer.IsZero() || q.done.Before(firstAnswer)) {
			firstAnswer = q.done
		}
	}
	for _, q := range queries {
		if q.sent.After(changed.Add(-2*time.Second)) && q.sent.Before(changed.Add(3*time.Second)) {
			worstAtChange = max(worstAtChange, q.qtime)
		}
		if q.sent.Before(blocked.Add(-time.Second)) || q.sent.After(firstAnswer) {
			if !q.answered {
				t.Errorf("query sent at +%v (outside the outage) not answered:\n%s", q.sent.Sub(changed).Round(time.Millisecond), q.out)
			}
			continue
		}
		during++
		if !q.answered {
			lost++
			continue
		}
		answeredDuring++
		worstLate = max(worstLate, q.qtime)
		// The max-age semantics: a query is delivered to named at most max-age after the
		// tunnel client read it; named answers at once and the answer itself waits for
		// nothing (the server end keeps every datagram, and the rock is up again). Two
		// seconds of slack cover dig's and the tunnel's own times on a loaded machine.
		if q.qtime > tunMaxAge+2*time.Second {
			t.Errorf("query sent %v into the outage answered after %v: later than --max-age %v allows", q.sent.Sub(blocked).Round(time.Millisecond), q.qtime, tunMaxAge)
		}
	}
	// The drop counters of both tunnel ends must account for every lost query.
	drops := scrapeDrops(t, w.client) + scrapeDrops(t, w.server)
	if drops != lost {
		t.Errorf("%d queries sent during the outage went unanswered, but the tunnel counted %d drops", lost, drops)
	}
	// A 30 s outage with a 10 s max-age: the oldest queries must have been dropped, the
	// youngest answered after the outage.
	if lost == 0 || answeredDuring == 0 {
		t.Errorf("outage: %d queries answered and %d dropped, want some of each (max-age %v < outage %v)", answeredDuring, lost, tunMaxAge, tunOutage)
	}
	t.Logf("address change: the slowest answer to a query sent from 2 s before to 3 s after it took %v", worstAtChange)
	t.Logf("30 s outage: %d queries sent during it, %d answered after it (the latest %v after it was sent), %d dropped and counted; first answer %v after the link was mended; %d queries in all",
		during, answeredDuring, worstLate, lost, firstAnswer.Sub(restored).Round(time.Millisecond), len(queries))
}

// scrapeDrops returns the sum of rockudp_tunnel_dropped_datagrams_total over every reason,
// from the metrics of the rockudp in host (127.0.0.1:9100 there).
func scrapeDrops(t *testing.T, host *netlab.Host) int {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return host.Dial(ctx, network, addr)
		}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://127.0.0.1:9100/metrics")
	if err != nil {
		t.Fatalf("metrics of %s: %v", host.Name(), err)
	}
	defer resp.Body.Close()
	total := 0
	sc := bufio.NewScanner(resp.Body)
	var seen []string
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "rockudp_tunnel_dropped_datagrams_total{") {
			continue
		}
		f := strings.Fields(l)
		n, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics of %s: %q", host.Name(), l)
		}
		total += int(n)
		if n > 0 {
			seen = append(seen, l)
		}
	}
	t.Logf("%s: tunnel drops %v", host.Name(), seen)
	return total
}
