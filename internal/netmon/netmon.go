// Package netmon watches the machine's network interfaces, addresses and
// default routes and tells subscribers when they change, within
// milliseconds, so that a connection can react to its local address
// disappearing (suspend at once) or to a new one appearing (reconnect at
// once) instead of waiting for heartbeats and backoffs.
//
// On Linux the Monitor listens to rtnetlink (links, IPv4 and IPv6
// addresses, IPv4 and IPv6 routes). A burst of kernel events is gathered
// for Config.Debounce (10 ms by default, counted from the burst's first
// event, so a storm cannot postpone delivery), except that an event that may
// report a loss (address or default route deleted, link down) is acted on
// at once; then the kernel's tables are dumped and compared with the
// previous dump: each ChangeDelta carries both states and precomputed
// answers (InterfaceIPDisappeared, AddressAppeared).
// If the kernel refuses the netlink socket, and on other systems, the
// Monitor polls the interfaces every Config.PollInterval instead.
//
// An address is usable when its interface is up and has a carrier and, for
// IPv6, when duplicate address detection has finished (IFA_F_TENTATIVE is
// clear). An interface going down removes its addresses from the usable set
// even though the kernel keeps its IPv4 addresses.
//
// The shape follows tailscale's net/netmon: New, Start, Close,
// RegisterChangeCallback, InjectEvent, and a private per-OS interface.
package netmon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Monitor. A nil *Config and the zero Config are
// valid: every zero field takes its default.
type Config struct {
	// Logger receives debug logs of every change and warnings about
	// netlink trouble. Default: nil, silent.
	Logger *slog.Logger
	// Debounce is how long the Monitor gathers a burst of kernel events
	// before it re-reads the tables, counted from the burst's first event.
	// Events that may report a loss (an address or a default route
	// deleted, a link down) are not gathered: they are delivered at once.
	// Default (zero): 10 ms. Negative: no gathering.
	Debounce time.Duration
	// PollInterval is how often the polling fallback reads the interfaces.
	// Default (zero or negative): 2 s.
	PollInterval time.Duration
}

const (
	defaultDebounce     = 10 * time.Millisecond
	defaultPollInterval = 2 * time.Second
	// maxQueue bounds each subscriber's queue: a subscriber that lags
	// this far behind gets its newest deltas merged into one.
	maxQueue = 16
	// retryPause paces the event reader after an unexpected socket error.
	retryPause = 100 * time.Millisecond
)

// populate returns a copy of cfg with the defaults filled in.
func (cfg *Config) populate() Config {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Debounce == 0 {
		c.Debounce = defaultDebounce
	} else if c.Debounce < 0 {
		c.Debounce = 0
	}
	if c.PollInterval <= 0 {
		c.PollInterval = defaultPollInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// osMon is the per-OS part of a Monitor.
type osMon interface {
	// Receive blocks until the OS reports that something may have changed
	// (or that events were lost). urgent means that something may have
	// been lost (an address, a link, a route): the Monitor then re-reads
	// the state at once instead of gathering a burst. After Close it
	// returns an error wrapping net.ErrClosed. It is called from one
	// goroutine at a time.
	Receive() (urgent bool, err error)
	// State reads the current state. It is called from one goroutine at a
	// time, never after Close has returned.
	State() (State, error)
	// Close unblocks Receive. It is called once.
	Close() error
}

// ErrClosed is returned by Start after Close. It wraps net.ErrClosed.
var ErrClosed = fmt.Errorf("netmon: monitor closed: %w", net.ErrClosed)

// Monitor watches the network and calls the registered callbacks on every
// change. Its methods are safe for concurrent use.
type Monitor struct {
	cfg     Config
	log     *slog.Logger
	os      osMon
	polling bool

	change chan struct{} // the OS reported something (capacity 1)
	urgent atomic.Bool   // ... and it may be a loss: skip the debounce
	inject chan struct{} // InjectEvent was called (capacity 1)
	done   chan struct{} // closed by Close
	wg     sync.WaitGroup

	mu      sync.Mutex
	state   State // the latest state, handed out read-only
	started bool
	closed  bool
	subs    map[*subscriber]struct{}
}

// subscriber is one registered callback with its own ordered queue, drained
// by a goroutine that runs only while the queue is not empty.
type subscriber struct {
	fn func(*ChangeDelta)
	// Guarded by Monitor.mu.
	queue   []*ChangeDelta
	running bool // a drain goroutine owns the queue
	gone    bool // unregistered
}

// New returns a Monitor and reads the current state, so that Addrs answers
// at once. It opens its netlink sockets in the network namespace of the
// calling thread (tests create it inside netlab's Host.Do); if netlink is
// refused (no socket, no bind, or no dump) it falls back to polling, which
// Polling reports. Call Start to follow changes, and Close to release the
// sockets.
func New(cfg *Config) (*Monitor, error) {
	return openMonitor(cfg.populate(), newOSMon)
}

// openMonitor opens the OS monitor with open, or the polling one if that
// fails (c has its defaults).
func openMonitor(c Config, open func(Config) (osMon, error)) (*Monitor, error) {
	om, err := open(c)
	if err == nil {
		m, merr := newMonitor(c, om, false)
		if merr == nil {
			return m, nil
		}
		err = merr
	}
	c.Logger.Warn("netmon: netlink refused, polling instead", "err", err, "interval", c.PollInterval)
	return newMonitor(c, newPollingMon(c.PollInterval, interfaceState), true)
}

// newMonitor builds a Monitor on om, with the defaults already in c.
func newMonitor(c Config, om osMon, polling bool) (*Monitor, error) {
	st, err := om.State()
	if err != nil {
		om.Close()
		return nil, fmt.Errorf("netmon: reading interfaces: %w", err)
	}
	m := &Monitor{
		cfg:     c,
		log:     c.Logger,
		os:      om,
		polling: polling,
		change:  make(chan struct{}, 1),
		inject:  make(chan struct{}, 1),
		done:    make(chan struct{}),
		state:   st,
		subs:    make(map[*subscriber]struct{}),
	}
	m.log.Debug("netmon: initial state", "polling", polling, "state", &m.state)
	return m, nil
}

// Polling reports whether the Monitor polls (no netlink), in which case
// changes are seen up to Config.PollInterval late.
func (m *Monitor) Polling() bool { return m.polling }

// Start starts the two goroutines that follow the OS: one reads its events,
// the other gathers them, re-reads the state and queues the deltas. Close
// waits for both (and for the callbacks' goroutines). Start returns
// ErrClosed after Close, and an error if called twice.
func (m *Monitor) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if m.started {
		return errors.New("netmon: already started")
	}
	m.started = true
	m.wg.Add(2)
	go m.receive()
	go m.run()
	return nil
}

// Close stops the Monitor, closes its sockets and waits for its goroutines,
// including a callback that is running (so Close must not be called from a
// callback). Queued deltas are dropped. Close is idempotent.
func (m *Monitor) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	for s := range m.subs {
		s.queue = nil
	}
	m.mu.Unlock()
	close(m.done)
	err := m.os.Close()
	m.wg.Wait()
	if err != nil {
		return fmt.Errorf("netmon: close: %w", err)
	}
	return nil
}

// RegisterChangeCallback registers fn to be called with every change, in
// order, from a goroutine of the Monitor's; never under a lock, so fn may
// call the Monitor's methods (except Close). Each subscriber has its own
// queue: a slow fn delays only itself (and when it lags by more than 16
// deltas, its newest ones are merged). unregister stops further calls; a
// call already started may still be running when it returns.
func (m *Monitor) RegisterChangeCallback(fn func(*ChangeDelta)) (unregister func()) {
	s := &subscriber{fn: fn}
	m.mu.Lock()
	if !m.closed {
		m.subs[s] = struct{}{}
	}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		s.gone = true
		s.queue = nil
		delete(m.subs, s)
	}
}

// InjectEvent makes the Monitor re-read the state and call every callback,
// with Injected set, even if nothing changed. Before Start, the event waits
// for Start.
func (m *Monitor) InjectEvent() {
	select {
	case m.inject <- struct{}{}:
	default: // one is pending already
	}
}

// Addrs returns the current usable addresses (see the package comment),
// sorted. The answer comes from the last state read; it does not ask the
// OS.
func (m *Monitor) Addrs() []netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state.Addrs()
}

// State returns the last state read. Do not modify it.
func (m *Monitor) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// receive turns the OS's reports into signals on m.change.
func (m *Monitor) receive() {
	defer m.wg.Done()
	for {
		urgent, err := m.os.Receive()
		select {
		case <-m.done:
			return
		default:
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("netmon: receive", "err", err)
			// Resync after the pause: events may have been lost.
			t := time.NewTimer(retryPause)
			select {
			case <-m.done:
				t.Stop()
				return
			case <-t.C:
			}
			urgent = true
		}
		if urgent {
			m.urgent.Store(true)
		}
		select {
		case m.change <- struct{}{}:
		default: // one is pending already
		}
	}
}

// run gathers the signals of a burst for Debounce, then re-reads the state
// and queues the delta for every subscriber. An urgent signal (a possible
// loss) ends the gathering at once.
func (m *Monitor) run() {
	defer m.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	pending, injected := false, false
	for {
		now := false
		select {
		case <-m.done:
			return
		case <-m.change:
			now = m.urgent.Swap(false)
		case <-m.inject:
			injected = true
		case <-timer.C:
			now = true
		}
		if now || m.cfg.Debounce == 0 {
			timer.Stop()
			pending = false
			m.update(injected)
			injected = false
		} else if !pending {
			pending = true
			timer.Reset(m.cfg.Debounce)
		}
	}
}

// update re-reads the state and queues the delta, if there is one.
func (m *Monitor) update(injected bool) {
	st, err := m.os.State()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		// Keep the old state; the next event (or a poll) tries again.
		m.log.Warn("netmon: reading interfaces", "err", err)
		st = m.state
	}
	d := newDelta(m.state, st, injected)
	if !d.changed() && !injected {
		return
	}
	m.state = st
	m.log.Debug("netmon: change", "delta", d)
	if m.closed {
		return
	}
	for s := range m.subs {
		m.enqueue(s, d)
	}
}

// enqueue queues d for s and starts its drain goroutine if none runs
// (m.mu held, m not closed).
func (m *Monitor) enqueue(s *subscriber, d *ChangeDelta) {
	if n := len(s.queue); n >= maxQueue {
		last := s.queue[n-1]
		s.queue[n-1] = newDelta(last.Old, d.New, last.Injected || d.Injected)
	} else {
		s.queue = append(s.queue, d)
	}
	if !s.running {
		s.running = true
		m.wg.Add(1)
		go m.drain(s)
	}
}

// drain calls s.fn with each queued delta, in order, and returns when the
// queue is empty.
func (m *Monitor) drain(s *subscriber) {
	defer m.wg.Done()
	for {
		m.mu.Lock()
		if s.gone || m.closed || len(s.queue) == 0 {
			s.running = false
			m.mu.Unlock()
			return
		}
		d := s.queue[0]
		s.queue[0] = nil
		s.queue = s.queue[1:]
		m.mu.Unlock()
		s.fn(d)
	}
}
