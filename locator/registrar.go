package locator

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/rockudp/rockudp/internal/netmon"
)

// retryMin is the first pause after a failed registration; it doubles up to the refresh
// interval.
const retryMin = 500 * time.Millisecond

// Registration is what a Registrar keeps registered.
type Registration struct {
	// Name is the DNS name to keep current. Required.
	Name string
	// Port is the port published in the SRV record. Required.
	Port uint16
	// Addrs returns the local addresses to publish; it is called at start, on Changed and
	// at each refresh. Default: the usable global unicast addresses of the host's interfaces
	// (up, IPv6 duplicate address detection finished; loopback and link-local excluded),
	// followed by a network monitor (netlink on Linux, polling elsewhere) that calls Changed
	// whenever they change, so a move is registered within milliseconds. The monitor
	// watches the network namespace of the thread that calls NewRegistrar. With Addrs set,
	// the caller calls Changed.
	Addrs func() []netip.Addr
	// Refresh is how often the records are registered again when nothing changed, so that
	// they are back within the TTL if the server lost them. Default half of Config.TTL.
	Refresh time.Duration
	// OnUpdate, if set, is called after every registration attempt with the new status, on
	// the Registrar's goroutine and never under its lock.
	OnUpdate func(RegistrarStatus)
}

// RegistrarStatus says how a Registrar is doing.
type RegistrarStatus struct {
	// Addrs are the addresses of the last attempt.
	Addrs []netip.Addr
	// Registered is when the last successful registration finished (zero: none yet).
	Registered time.Time
	// Err is the error of the last attempt (nil: it succeeded).
	Err error
	// Attempts and Successes count registration attempts and successful ones.
	Attempts, Successes int
}

// Registrar keeps a name's records current: it registers at start, again at once when the
// host's addresses change (or on Changed), again every Refresh, retries failures with
// backoff, and removes the records on Close. While there is no usable address it leaves the
// records as they are.
type Registrar struct {
	cfg    Config
	reg    Registration
	mon    *netmon.Monitor // follows the host's addresses; nil with Registration.Addrs
	ctx    context.Context
	cancel context.CancelFunc
	kick   chan struct{}
	done   chan struct{}
	once   sync.Once
	mu     sync.Mutex
	status RegistrarStatus
	err    error // of Close
}

// NewRegistrar checks cfg and reg and starts keeping reg.Name registered in the background.
// cfg must have a Key.
func NewRegistrar(cfg *Config, reg Registration) (*Registrar, error) {
	c := cfg.withDefaults()
	if _, err := c.key(); err != nil {
		return nil, err
	}
	name, err := zoneName(reg.Name, "")
	if err != nil {
		return nil, err
	}
	if reg.Port == 0 {
		return nil, fmt.Errorf("locator: registrar for %s: port 0", name)
	}
	reg.Name = name
	if reg.Refresh <= 0 {
		reg.Refresh = c.TTL / 2
	}
	r := &Registrar{cfg: c, reg: reg, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if reg.Addrs == nil {
		mon, err := netmon.New(&netmon.Config{Logger: c.Logger})
		if err == nil {
			err = mon.Start()
		}
		if err != nil {
			if mon != nil {
				mon.Close()
			}
			return nil, fmt.Errorf("locator: registrar for %s: cannot follow the host's addresses (give Registration.Addrs instead): %w", name, err)
		}
		r.mon = mon
		r.reg.Addrs = r.monitoredAddrs
		// Every change, not only added or removed addresses: the loop compares the
		// addresses and registers only when they differ from the last ones.
		mon.RegisterChangeCallback(func(*netmon.ChangeDelta) { r.Changed() })
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	go r.loop()
	return r, nil
}

// Changed tells the Registrar that the local addresses may have changed: it registers again
// at once if they did. It never blocks, so a network monitor may call it from its callback.
func (r *Registrar) Changed() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Status returns the Registrar's current status.
func (r *Registrar) Status() RegistrarStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Addrs = slices.Clone(s.Addrs)
	return s
}

// Close stops the Registrar and removes the name's records (within Config.Timeout),
// returning the error of that removal. Close is idempotent.
func (r *Registrar) Close() error {
	r.once.Do(func() {
		if r.mon != nil {
			r.mon.Close() // waits for a running callback, which never blocks
		}
		r.cancel()
		<-r.done
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.Timeout)
		defer cancel()
		r.err = r.cfg.register(ctx, r.reg.Name, 0, nil)
	})
	return r.err
}

func (r *Registrar) loop() {
	defer close(r.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last []netip.Addr
	ok := false
	backoff := retryMin
	for {
		forced := true
		select {
		case <-r.ctx.Done():
			return
		case <-timer.C:
		case <-r.kick:
			forced = false
		}
		addrs := r.addrs()
		if !forced && ok && slices.Equal(addrs, last) {
			continue // a change that does not concern the published addresses
		}
		if len(addrs) == 0 && ok {
			// No usable address for now (an interface going down, or an address change,
			// which removes the old address before it adds the new one): keep the
			// published records rather than remove the name.
			if forced {
				timer.Reset(r.reg.Refresh)
			}
			continue
		}
		err := r.registerOnce(addrs)
		if r.ctx.Err() != nil {
			return
		}
		last, ok = addrs, err == nil
		r.mu.Lock()
		r.status.Addrs = addrs
		r.status.Err = err
		r.status.Attempts++
		if err == nil {
			r.status.Successes++
			r.status.Registered = time.Now()
		}
		st := r.status
		st.Addrs = slices.Clone(addrs)
		r.mu.Unlock()
		next := r.reg.Refresh
		if err != nil {
			r.cfg.Logger.Warn("locator: registration failed", "name", r.reg.Name, "err", err)
			next = min(backoff, r.reg.Refresh)
			backoff *= 2
		} else {
			backoff = retryMin
		}
		timer.Reset(next)
		if r.reg.OnUpdate != nil {
			r.reg.OnUpdate(st)
		}
	}
}

// registerOnce finds the zone (once) and registers addrs.
func (r *Registrar) registerOnce(addrs []netip.Addr) error {
	if r.cfg.Zone == "" {
		z, err := r.cfg.findZone(r.ctx, r.reg.Name)
		if err != nil {
			return err
		}
		r.cfg.Zone = z
	}
	return r.cfg.register(r.ctx, r.reg.Name, r.reg.Port, addrs)
}

// addrs returns the usable addresses to publish, sorted and without repeats.
func (r *Registrar) addrs() []netip.Addr {
	var out []netip.Addr
	for _, a := range r.reg.Addrs() {
		if a, ok := usableAddr(a); ok {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// monitoredAddrs returns the usable global unicast addresses the monitor last saw.
func (r *Registrar) monitoredAddrs() []netip.Addr {
	var out []netip.Addr
	for _, p := range r.mon.Addrs() {
		if a := p.Addr(); a.IsGlobalUnicast() {
			out = append(out, a)
		}
	}
	return out
}
