package edp

import (
	"sync"
	"time"
)

// Cache defaults.
const (
	// DefaultCacheTTL is the TTL of NewCache(0).
	DefaultCacheTTL = 10 * time.Minute
	// DefaultNegativeTTL caps the TTL of negative entries (server not enhanced). It is
	// short because a wrong negative entry (an enhanced server that was too slow to see
	// the probe's half-close) costs ordinary, unenhanced connections until it expires,
	// while a right one only saves a probe.
	DefaultNegativeTTL = 30 * time.Second
	// MaxCacheEntries bounds a Cache; at the limit expired entries are dropped, then
	// arbitrary ones.
	MaxCacheEntries = 4096
)

// CacheEntry is what a Cache remembers about one server address.
type CacheEntry struct {
	Enhanced     bool
	Reason       Reason // why the server is ordinary (negative entries)
	Offered      []ID   // the server's list from its probe reply
	Announcement []byte // the server's announcement (positive entries)
	Expires      time.Time
}

// Cache remembers probe results per server address (the address string given to
// Dial), so repeat Dials to the same server skip the probe. Positive entries live for
// the TTL given to NewCache, negative ones for min(TTL, DefaultNegativeTTL) unless
// SetNegativeTTL says otherwise. A failed enhanced handshake invalidates the entry.
// A Cache is safe for concurrent use; share one per process. Methods on a nil *Cache
// do nothing.
type Cache struct {
	mu      sync.Mutex
	ttl     time.Duration
	negTTL  time.Duration
	entries map[string]CacheEntry
	now     func() time.Time // time.Now; tests replace it
}

// NewCache returns an empty cache whose positive entries live for ttl
// (<= 0: DefaultCacheTTL).
func NewCache(ttl time.Duration) *Cache {
	if ttl <= 0 {
		ttl = DefaultCacheTTL
	}
	return &Cache{
		ttl:     ttl,
		negTTL:  min(ttl, DefaultNegativeTTL),
		entries: make(map[string]CacheEntry),
		now:     time.Now,
	}
}

// SetNegativeTTL sets how long negative entries live (<= 0: not cached at all).
func (c *Cache) SetNegativeTTL(d time.Duration) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.negTTL = d
	c.mu.Unlock()
}

// Lookup returns the live entry for addr.
func (c *Cache) Lookup(addr string) (CacheEntry, bool) {
	if c == nil {
		return CacheEntry{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[addr]
	if ok && !c.now().Before(e.Expires) {
		delete(c.entries, addr)
		return CacheEntry{}, false
	}
	return e, ok
}

// Invalidate forgets addr.
func (c *Cache) Invalidate(addr string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.entries, addr)
	c.mu.Unlock()
}

// Len returns the number of entries, expired ones included.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// store remembers a probe result for addr. Truncated announcements are not cached.
func (c *Cache) store(addr string, r Result) {
	if c == nil || !r.Enhanced && r.Reason == ReasonTruncated {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ttl := c.ttl
	if !r.Enhanced {
		ttl = c.negTTL
	}
	if ttl <= 0 {
		delete(c.entries, addr)
		return
	}
	now := c.now()
	if _, ok := c.entries[addr]; !ok && len(c.entries) >= MaxCacheEntries {
		c.evict(now)
	}
	c.entries[addr] = CacheEntry{
		Enhanced:     r.Enhanced,
		Reason:       r.Reason,
		Offered:      r.Offered,
		Announcement: r.Announcement,
		Expires:      now.Add(ttl),
	}
}

// evict makes room for one entry; c.mu is held.
func (c *Cache) evict(now time.Time) {
	for k, e := range c.entries {
		if !now.Before(e.Expires) {
			delete(c.entries, k)
		}
	}
	for k := range c.entries {
		if len(c.entries) < MaxCacheEntries {
			return
		}
		delete(c.entries, k)
	}
}
