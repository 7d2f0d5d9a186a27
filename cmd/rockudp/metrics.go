package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rockudp/rockudp/callbacks"
	"github.com/rockudp/rockudp/tunnel"
)

// metrics are the counters and gauges a command exposes on --metrics, in its own
// registry (nothing global).
type metrics struct {
	reg      *prometheus.Registry
	events   *prometheus.CounterVec
	downtime prometheus.Histogram
	replayed prometheus.Counter
	live     atomic.Int64
	bytes    *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rockudp_rock_events_total", Help: "Rock events by kind (suspended, reconnecting, resumed, closed, timed-out).",
	}, []string{"kind"})
	m.downtime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "rockudp_rock_downtime_seconds", Help: "How long rocks stayed suspended before resuming.",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 300, 3600},
	})
	m.replayed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "rockudp_rock_replayed_bytes_total", Help: "Bytes sent again after resumptions (go-back-N replay).",
	})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "rockudp_forwarded_bytes_total", Help: "Bytes forwarded between local connections and rocks.",
	}, []string{"direction"})
	live := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rockudp_rocks_open", Help: "Rocks opened and not yet closed.",
	}, func() float64 { return float64(m.live.Load()) })
	m.reg.MustRegister(m.events, m.downtime, m.replayed, m.bytes, live,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// HandleEvent counts a rock event.
func (m *metrics) HandleEvent(e callbacks.Event) {
	if m == nil {
		return
	}
	m.events.WithLabelValues(e.Kind.String()).Inc()
	switch e.Kind {
	case callbacks.Resumed:
		m.downtime.Observe(e.Downtime.Seconds())
		m.replayed.Add(float64(e.Replayed))
	case callbacks.Closed:
		m.live.Add(-1)
	}
}

// opened counts a new rock (zero id: plain TCP, not a rock).
func (m *metrics) opened(id [16]byte) {
	if m != nil && id != ([16]byte{}) {
		m.live.Add(1)
	}
}

// forwarded counts bytes a join copied.
func (m *metrics) forwarded(toRock, fromRock int64) {
	if m == nil {
		return
	}
	m.bytes.WithLabelValues("to_rock").Add(float64(toRock))
	m.bytes.WithLabelValues("from_rock").Add(float64(fromRock))
}

// addTunnel exposes a tunnel end's counters.
func (m *metrics) addTunnel(stats func() tunnel.Stats) {
	counter := func(name, help string, f func(tunnel.Stats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(stats()) })
	}
	gauge := func(name, help string, f func(tunnel.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(stats()) })
	}
	m.reg.MustRegister(
		counter("rockudp_tunnel_datagrams_in_total", "Datagrams read from local UDP sockets.", func(s tunnel.Stats) float64 { return float64(s.DatagramsIn) }),
		counter("rockudp_tunnel_bytes_in_total", "Bytes of datagrams read from local UDP sockets.", func(s tunnel.Stats) float64 { return float64(s.BytesIn) }),
		counter("rockudp_tunnel_datagrams_out_total", "Datagrams sent to local UDP sockets.", func(s tunnel.Stats) float64 { return float64(s.DatagramsOut) }),
		counter("rockudp_tunnel_bytes_out_total", "Bytes of datagrams sent to local UDP sockets.", func(s tunnel.Stats) float64 { return float64(s.BytesOut) }),
		gauge("rockudp_tunnel_flows", "Flows open now.", func(s tunnel.Stats) float64 { return float64(s.Flows) }),
		gauge("rockudp_tunnel_queued_bytes", "Bytes waiting for the rock.", func(s tunnel.Stats) float64 { return float64(s.QueuedBytes) }),
	)
	drops := prometheus.NewDesc("rockudp_tunnel_dropped_datagrams_total", "Datagrams dropped, by reason.", []string{"reason"}, nil)
	m.reg.MustRegister(&dropCollector{desc: drops, stats: stats})
}

// dropCollector reports the tunnel's drops by reason.
type dropCollector struct {
	desc  *prometheus.Desc
	stats func() tunnel.Stats
}

func (c *dropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c *dropCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for _, reason := range tunnel.DropReasons() {
		if int(reason) < len(s.Drops) {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(s.Drops[reason]), reason.String())
		}
	}
}

// serveMetrics serves m on addr at /metrics until ctx ends. It returns once the
// listener is bound, so that a busy address is reported at start.
func serveMetrics(ctx context.Context, addr string, m *metrics, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	stopped := context.AfterFunc(ctx, func() { srv.Close() })
	return func() {
		stopped()
		srv.Close()
		<-done
	}, nil
}
