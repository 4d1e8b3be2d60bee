package fedclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/myelin-chat/myelin/internal/netguard"
)

// ErrDenied is returned (wrapped) when an outbound connection would reach an address that
// federation_api.deny_networks forbids or federation_api.allow_networks does not allow. It is
// netguard.ErrDenied, so errors.Is matches either.
var ErrDenied = netguard.ErrDenied

const (
	dialTimeout = 10 * time.Second
	// transportIdle is how long a per-SNI transport lives unused before it is dropped.
	transportIdle = 5 * time.Minute
)

// dialer makes the TCP connections of all outbound federation traffic, well-known lookups
// included, applying the network policy to every address.
type dialer struct {
	d     net.Dialer
	hosts map[string]string
}

func newDialer(g *netguard.Guard, hosts map[string]string) *dialer {
	return &dialer{
		d:     net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second, ControlContext: g.Control},
		hosts: hosts,
	}
}

// DialContext connects to addr, or to what Config.Hosts maps it to.
func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if to, ok := d.hosts[addr]; ok {
		addr = to
	}
	return d.d.DialContext(ctx, network, addr)
}

// transport is the http.RoundTripper behind the federation client. It serves matrix://
// URLs: it resolves the server name by the spec's discovery rules (with an expiring cache),
// then sends the request over HTTPS with the resolved Host header and TLS server name,
// trying each resolved destination in turn. It keeps one http.Transport per TLS server name,
// because the SNI name is fixed per transport.
type transport struct {
	res        *resolver
	dial       *dialer
	skipVerify bool
	keepAlives bool

	mu        sync.Mutex
	bySNI     map[string]*sniTransport
	lastSweep time.Time
}

type sniTransport struct {
	*http.Transport
	lastUsed time.Time
}

func (t *transport) forSNI(name string) *http.Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if now.Sub(t.lastSweep) > time.Minute {
		t.lastSweep = now
		for k, st := range t.bySNI {
			if now.Sub(st.lastUsed) > transportIdle {
				st.CloseIdleConnections()
				delete(t.bySNI, k)
			}
		}
	}
	st, ok := t.bySNI[name]
	if !ok {
		st = &sniTransport{Transport: &http.Transport{
			DialContext:         t.dial.DialContext,
			TLSClientConfig:     &tls.Config{ServerName: name, InsecureSkipVerify: t.skipVerify, MinVersion: tls.VersionTLS12}, //nolint:gosec // skip only when configured
			TLSHandshakeTimeout: dialTimeout,
			DisableKeepAlives:   !t.keepAlives,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   true,
			// No Proxy: a proxy would be the address checked instead of the destination.
		}}
		t.bySNI[name] = st
	}
	st.lastUsed = now
	return st.Transport
}

// RoundTrip implements http.RoundTripper for matrix:// URLs. An https:// URL (a redirect,
// or a media Location) is fetched as it is, under the same network policy.
func (t *transport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme == "https" {
		return t.forSNI(r.URL.Hostname()).RoundTrip(r)
	}
	if r.URL.Scheme != "matrix" {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, fmt.Errorf("fedclient: unsupported URL scheme %q", r.URL.Scheme)
	}
	serverName := r.URL.Host
	dests, cached, err := t.res.resolve(r.Context(), serverName)
	if err != nil {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, fmt.Errorf("resolving %s: %w", serverName, err)
	}
	resp, retry, err := t.try(r, dests, true)
	if err == nil {
		return resp, nil
	}
	// Every destination failed to connect: forget what discovery said, and if that was an
	// old answer, ask again once.
	t.res.forget(serverName)
	if cached && retry {
		if fresh, _, rerr := t.res.resolve(r.Context(), serverName); rerr == nil {
			if resp, _, err2 := t.try(r, fresh, false); err2 == nil {
				return resp, nil
			}
		}
	}
	return nil, fmt.Errorf("sending to %s: %w", serverName, err)
}

// try sends r to each destination until one answers. first says r.Body is still unread
// and may be used directly. retry reports whether r's body can be sent again.
func (t *transport) try(r *http.Request, dests []destination, first bool) (resp *http.Response, retry bool, err error) {
	err = errors.New("no destinations")
	for _, d := range dests {
		out := r.Clone(r.Context())
		u := *r.URL
		u.Scheme, u.Host = "https", d.Addr
		out.URL, out.Host = &u, d.Host
		if !first && r.Body != nil && r.Body != http.NoBody {
			if r.GetBody == nil {
				return nil, false, err
			}
			body, berr := r.GetBody()
			if berr != nil {
				return nil, false, berr
			}
			out.Body = body
		}
		first = false
		resp, err = t.forSNI(d.SNI).RoundTrip(out)
		if err == nil {
			return resp, true, nil
		}
	}
	return nil, r.Body == nil || r.Body == http.NoBody || r.GetBody != nil, err
}
