package bench

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// A pair is one connection of a contender (plain TCP or a rock) with both ends in this
// process. The server end runs jobs the measuring side hands it over a channel: sink (count
// bytes until the sender says how many it wrote) or echo (send every block back). The sender
// interrupts a server end blocked in Read by setting its read deadline to the past ("kick");
// the server treats every timeout as "look at the job again".
type pair struct {
	name string
	c, s net.Conn
	jobs chan *job
	wg   sync.WaitGroup
}

type jobKind int

const (
	jobSink jobKind = iota
	jobEcho
)

type job struct {
	kind  jobKind
	size  int
	total chan int64    // sink: the sender's byte count, once it stopped writing
	stop  chan struct{} // echo: closed when the sender is done
	done  chan jobResult
}

type jobResult struct {
	n   int64
	end time.Time // when the sink had read the last byte
	err error
}

func newPair(name string, c, s net.Conn) *pair {
	p := &pair{name: name, c: c, s: s, jobs: make(chan *job)}
	p.wg.Go(p.serve)
	return p
}

// close closes both ends and waits for the server goroutine.
func (p *pair) close() {
	close(p.jobs)
	p.wg.Wait()
	p.c.Close()
	p.s.Close()
}

func (p *pair) serve() {
	buf := make([]byte, 256<<10)
	for j := range p.jobs {
		switch j.kind {
		case jobSink:
			j.done <- p.sink(j, buf)
		case jobEcho:
			j.done <- p.echo(j, buf)
		}
	}
}

func (p *pair) kick() { _ = p.s.SetReadDeadline(time.Now()) }

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func (p *pair) sink(j *job, buf []byte) jobResult {
	var n int64
	total := int64(-1)
	var last time.Time
	for {
		k, err := p.s.Read(buf)
		if k > 0 {
			n += int64(k)
			last = time.Now()
		}
		if total < 0 {
			select {
			case total = <-j.total:
			default:
			}
		}
		if total >= 0 && n >= total {
			return jobResult{n: n, end: last}
		}
		if err != nil {
			if isTimeout(err) {
				_ = p.s.SetReadDeadline(time.Time{})
				continue
			}
			return jobResult{n: n, err: err}
		}
	}
}

func (p *pair) echo(j *job, buf []byte) jobResult {
	b := buf[:j.size]
	var rounds int64
	for {
		got := 0
		for got < len(b) {
			k, err := p.s.Read(b[got:])
			got += k
			if err == nil {
				continue
			}
			if !isTimeout(err) {
				return jobResult{n: rounds, err: err}
			}
			_ = p.s.SetReadDeadline(time.Time{})
			if got == 0 {
				select {
				case <-j.stop:
					return jobResult{n: rounds}
				default:
				}
			}
		}
		if _, err := p.s.Write(b); err != nil {
			return jobResult{n: rounds, err: err}
		}
		rounds++
	}
}

// throughput writes blocks of size for at most d and at most limit bytes (0: no limit), and
// returns the bytes per second the server end received, from the first write to the last
// byte read.
func (p *pair) throughput(size int, d time.Duration, limit int64) (float64, error) {
	j := &job{kind: jobSink, total: make(chan int64, 1), done: make(chan jobResult, 1)}
	p.jobs <- j
	block := make([]byte, size)
	var sent int64
	start := time.Now()
	deadline := start.Add(d)
	var werr error
	for i := 0; ; i++ {
		if _, err := p.c.Write(block); err != nil {
			werr = err
			break
		}
		sent += int64(size)
		if limit > 0 && sent >= limit {
			break
		}
		if (size >= 1024 || i%16 == 0) && time.Now().After(deadline) {
			break
		}
	}
	j.total <- sent
	p.kick()
	res := <-j.done
	if err := errors.Join(werr, res.err); err != nil {
		return 0, err
	}
	return float64(res.n) / res.end.Sub(start).Seconds(), nil
}

// latency sends a block of size and reads it back, for at least minRounds round trips and d
// and at most maxRounds round trips, and returns each round trip's duration.
func (p *pair) latency(size int, d time.Duration, minRounds, maxRounds int) ([]time.Duration, error) {
	j := &job{kind: jobEcho, size: size, stop: make(chan struct{}), done: make(chan jobResult, 1)}
	p.jobs <- j
	block := make([]byte, size)
	var rts []time.Duration
	start := time.Now()
	var err error
	for len(rts) < maxRounds {
		t0 := time.Now()
		if _, err = p.c.Write(block); err != nil {
			break
		}
		if _, err = io.ReadFull(p.c, block); err != nil {
			break
		}
		rts = append(rts, time.Since(t0))
		if len(rts) >= minRounds && time.Since(start) >= d {
			break
		}
	}
	close(j.stop)
	p.kick()
	res := <-j.done
	if err := errors.Join(err, res.err); err != nil {
		return nil, err
	}
	return rts, nil
}
