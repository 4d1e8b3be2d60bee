package fedclient

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"golang.org/x/sync/singleflight"
)

// Cache periods for server discovery. The spec recommends caching a well-known answer as
// its Cache-Control says, 24 hours when it says nothing, at most 48 hours, and errors for
// up to an hour with exponential back-off; Synapse adds a lower bound of 5 minutes.
const (
	wellKnownDefault  = 24 * time.Hour
	wellKnownMin      = 5 * time.Minute
	wellKnownMax      = 48 * time.Hour
	wellKnownErrFirst = 2 * time.Minute
	wellKnownErrMax   = time.Hour
	wellKnownMaxBytes = 50 << 10
	wellKnownTimeout  = 10 * time.Second
	wellKnownRedirect = 5
	// srvCache is how long SRV answers (and their absence) are kept: Go's resolver does not
	// expose record TTLs.
	srvCache = time.Hour
	// maxCached bounds each discovery cache; a full cache is emptied.
	maxCached = 10000
)

// destination is one place to send a request for a server name.
type destination struct {
	Addr string // host:port to dial
	Host string // the Host header
	SNI  string // the TLS server name, which the certificate must match
}

type wellKnownEntry struct {
	delegated string // "" when there is no usable well-known
	expires   time.Time
	failures  int
}

type srvEntry struct {
	targets []*net.SRV
	expires time.Time
}

// resolver implements the spec's server name resolution, caching well-known and SRV
// answers until they expire. Concurrent lookups of one name share a single request.
type resolver struct {
	wellKnown *http.Client
	lookupSRV func(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
	now       func() time.Time

	mu  sync.Mutex
	wk  map[string]wellKnownEntry
	srv map[string]srvEntry

	wkFlight  flightGroup[wellKnownEntry]
	srvFlight flightGroup[[]*net.SRV]
}

func newResolver(d *dialer, skipVerify bool) *resolver {
	tr := &http.Transport{
		DialContext:         d.DialContext,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: skipVerify, MinVersion: tls.VersionTLS12}, //nolint:gosec // skip only when configured
		TLSHandshakeTimeout: dialTimeout,
		DisableKeepAlives:   true,
	}
	return &resolver{
		wellKnown: &http.Client{
			Transport: tr,
			Timeout:   wellKnownTimeout,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= wellKnownRedirect {
					return errors.New("too many redirects")
				}
				if req.URL.Scheme != "https" {
					return fmt.Errorf("redirect to non-https URL %s", req.URL.Redacted())
				}
				return nil
			},
		},
		lookupSRV: net.DefaultResolver.LookupSRV,
		now:       time.Now,
		wk:        map[string]wellKnownEntry{},
		srv:       map[string]srvEntry{},
	}
}

// resolve returns where to send requests for serverName, in order of preference. cached
// reports whether any part of the answer came from the cache.
func (r *resolver) resolve(ctx context.Context, serverName string) (dests []destination, cached bool, err error) {
	host, port, ok := spec.ParseAndValidateServerName(spec.ServerName(serverName))
	if !ok {
		return nil, false, fmt.Errorf("invalid server name %q", serverName)
	}
	// 1. An IP literal, with the given port or 8448.
	if ip := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"); net.ParseIP(ip) != nil {
		return []destination{{Addr: net.JoinHostPort(ip, portOr8448(port)), Host: serverName, SNI: ip}}, false, nil
	}
	// 2. A hostname with an explicit port.
	if port != -1 {
		return []destination{{Addr: serverName, Host: serverName, SNI: host}}, false, nil
	}
	// 3. /.well-known/matrix/server.
	wk, wkCached := r.lookupWellKnown(ctx, host)
	if wk.delegated != "" {
		dhost, dport, _ := spec.ParseAndValidateServerName(spec.ServerName(wk.delegated))
		if ip := strings.TrimSuffix(strings.TrimPrefix(dhost, "["), "]"); net.ParseIP(ip) != nil {
			// 3.1 A delegated IP literal.
			return []destination{{Addr: net.JoinHostPort(ip, portOr8448(dport)), Host: wk.delegated, SNI: ip}}, wkCached, nil
		}
		if dport != -1 {
			// 3.2 A delegated hostname with a port.
			return []destination{{Addr: wk.delegated, Host: wk.delegated, SNI: dhost}}, wkCached, nil
		}
		// 3.3–3.5 SRV records of the delegated name, else port 8448.
		dests, srvCached := r.srvOr8448(ctx, dhost)
		return dests, wkCached || srvCached, nil
	}
	// 4–6. SRV records of the server name, else port 8448.
	dests, srvCached := r.srvOr8448(ctx, host)
	return dests, wkCached || srvCached, nil
}

func portOr8448(port int) string {
	if port == -1 {
		return "8448"
	}
	return strconv.Itoa(port)
}

// srvOr8448 looks up _matrix-fed._tcp.host, then _matrix._tcp.host; without either the
// answer is host:8448. The Host header and TLS name stay host whatever the SRV target.
func (r *resolver) srvOr8448(ctx context.Context, host string) ([]destination, bool) {
	targets, cached := r.lookupSRVCached(ctx, host)
	var dests []destination
	for _, t := range targets {
		target := strings.TrimSuffix(t.Target, ".")
		if target == "" {
			continue
		}
		dests = append(dests, destination{Addr: net.JoinHostPort(target, strconv.Itoa(int(t.Port))), Host: host, SNI: host})
	}
	if len(dests) == 0 {
		dests = []destination{{Addr: net.JoinHostPort(host, "8448"), Host: host, SNI: host}}
	}
	return dests, cached
}

func (r *resolver) lookupSRVCached(ctx context.Context, host string) ([]*net.SRV, bool) {
	r.mu.Lock()
	e, ok := r.srv[host]
	r.mu.Unlock()
	if ok && r.now().Before(e.expires) {
		return e.targets, true
	}
	targets, _ := r.srvFlight.do(host, func() ([]*net.SRV, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wellKnownTimeout)
		defer cancel()
		targets, err := r.srvRecords(ctx, host)
		if err != nil {
			// A DNS failure other than "no such record": use port 8448 this time, and ask
			// again next time rather than caching the failure.
			return nil, err
		}
		r.mu.Lock()
		if len(r.srv) >= maxCached {
			clear(r.srv)
		}
		r.srv[host] = srvEntry{targets: targets, expires: r.now().Add(srvCache)}
		r.mu.Unlock()
		return targets, nil
	})
	return targets, false
}

// srvRecords returns the targets of _matrix-fed._tcp.host, else of the deprecated
// _matrix._tcp.host; none (and no error) when neither exists. Go's resolver sorts them by
// priority and shuffles them by weight.
func (r *resolver) srvRecords(ctx context.Context, host string) ([]*net.SRV, error) {
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, targets, err := r.lookupSRV(ctx, service, "tcp", host)
		var dnsErr *net.DNSError
		switch {
		case err == nil && len(targets) > 0:
			return targets, nil
		case err == nil, errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			continue
		default:
			return nil, fmt.Errorf("looking up SRV _%s._tcp.%s: %w", service, host, err)
		}
	}
	return nil, nil
}

func (r *resolver) lookupWellKnown(ctx context.Context, host string) (wellKnownEntry, bool) {
	r.mu.Lock()
	e, ok := r.wk[host]
	r.mu.Unlock()
	if ok && r.now().Before(e.expires) {
		return e, true
	}
	res, _ := r.wkFlight.do(host, func() (wellKnownEntry, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wellKnownTimeout)
		defer cancel()
		delegated, ttl, err := r.fetchWellKnown(ctx, host)
		now := r.now()
		next := wellKnownEntry{delegated: delegated, expires: now.Add(ttl)}
		if err != nil {
			// Back off exponentially on repeated failures, up to an hour.
			next.failures = e.failures + 1
			backoff := wellKnownErrFirst << min(next.failures-1, 8)
			next.expires = now.Add(min(backoff, wellKnownErrMax))
		}
		r.mu.Lock()
		if len(r.wk) >= maxCached {
			clear(r.wk)
		}
		r.wk[host] = next
		r.mu.Unlock()
		return next, nil
	})
	return res, false
}

// fetchWellKnown fetches https://host/.well-known/matrix/server and returns the delegated
// server name and how long to cache it. Any failure (network, status, size, JSON, an
// invalid m.server) is an error.
func (r *resolver) fetchWellKnown(ctx context.Context, host string) (string, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/.well-known/matrix/server", nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := r.wellKnown.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, fmt.Errorf("well-known answered %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, wellKnownMaxBytes+1))
	if err != nil {
		return "", 0, fmt.Errorf("reading well-known: %w", err)
	}
	if len(body) > wellKnownMaxBytes {
		return "", 0, fmt.Errorf("well-known is larger than %d bytes", wellKnownMaxBytes)
	}
	var wk struct {
		Server string `json:"m.server"`
	}
	if err := json.Unmarshal(body, &wk); err != nil {
		return "", 0, fmt.Errorf("decoding well-known: %w", err)
	}
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(wk.Server)); !ok {
		return "", 0, fmt.Errorf("well-known m.server %q is not a server name", wk.Server)
	}
	return wk.Server, cachePeriod(resp.Header, r.now()), nil
}

// cachePeriod reads Cache-Control (max-age, no-store, no-cache) and Expires, preferring
// max-age as RFC 9111 says, and bounds the result to [5 minutes, 48 hours]; 24 hours when
// the headers say nothing.
func cachePeriod(h http.Header, now time.Time) time.Duration {
	d, maxAge := wellKnownDefault, false
	if exp := h.Get("Expires"); exp != "" {
		if t, err := http.ParseTime(exp); err == nil {
			d = t.Sub(now)
		}
	}
	for _, directive := range strings.Split(h.Get("Cache-Control"), ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(directive), "=")
		switch strings.ToLower(k) {
		case "max-age":
			if secs, err := strconv.ParseInt(strings.Trim(v, `"`), 10, 64); err == nil {
				d, maxAge = time.Duration(secs)*time.Second, true
			}
		case "no-store", "no-cache":
			d, maxAge = 0, true
		}
		if maxAge {
			break
		}
	}
	return min(max(d, wellKnownMin), wellKnownMax)
}

// forget drops what discovery knows about serverName, after every destination it gave
// failed to connect.
func (r *resolver) forget(serverName string) {
	host, port, ok := spec.ParseAndValidateServerName(spec.ServerName(serverName))
	if !ok || port != -1 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.wk[host]; ok && e.delegated != "" {
		if dhost, _, ok := spec.ParseAndValidateServerName(spec.ServerName(e.delegated)); ok {
			delete(r.srv, dhost)
		}
		delete(r.wk, host)
	}
	delete(r.srv, host)
}

// flightGroup runs one call per key at a time; callers arriving meanwhile share its result.
// It is singleflight.Group with the result typed.
type flightGroup[T any] struct {
	g singleflight.Group
}

func (f *flightGroup[T]) do(key string, fn func() (T, error)) (T, error) {
	v, err, _ := f.g.Do(key, func() (any, error) { return fn() })
	t, _ := v.(T)
	return t, err
}
