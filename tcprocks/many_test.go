package tcprocks

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
)

// TestThousandRocks runs 1,000 rocks on one listener (250 under -race, 100 with -short); each
// is forced to reconnect and must carry data afterwards.
func TestThousandRocks(t *testing.T) {
	n := 1000
	if raceEnabled {
		n = 250 // 1,000 rocks under -race need about 4 GB
	}
	if testing.Short() {
		n = 100
	}
	srvCfg, cliCfg := testConfigs(t)
	resumed := countResumed(cliCfg)
	l := listen(t, srvCfg)
	servers := make(map[[16]byte]*Conn)
	var smu sync.Mutex
	var accWG sync.WaitGroup
	accWG.Go(func() {
		for range n {
			s, err := l.AcceptConn()
			if err != nil {
				t.Error(err)
				return
			}
			smu.Lock()
			servers[s.ID()] = s
			smu.Unlock()
		}
	})
	clients := make([]*Conn, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range clients {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := Dial(ctx, "tcp", l.Addr().String(), cliCfg)
			if err != nil {
				t.Error(err)
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	accWG.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
		for _, s := range servers {
			s.Close()
		}
		for _, c := range clients {
			waitDone(t, c)
		}
		for _, s := range servers {
			waitDone(t, s)
		}
	})
	for _, c := range clients {
		c.Suspend()
	}
	waitForLong(t, fmt.Sprintf("%d resumptions", n), 120*time.Second, func() bool { return resumed.Load() == int64(n) })
	t.Logf("%d rocks resumed", resumed.Load())
	for i, c := range clients {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s := servers[c.ID()]
			msg := []byte(fmt.Sprintf("rock %d", i))
			c.SetDeadline(time.Now().Add(60 * time.Second))
			s.SetDeadline(time.Now().Add(60 * time.Second))
			if _, err := c.Write(msg); err != nil {
				t.Error(err)
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(s, got); err != nil || string(got) != string(msg) {
				t.Errorf("rock %d: %q, %v", i, got, err)
			}
		})
	}
	wg.Wait()
}
