// Package netguard decides which IP addresses outbound connections may reach: the guard
// against server-side request forgery used by federation and URL previews. It checks the
// exact address dialled, after DNS resolution, so DNS rebinding cannot slip past it.
// Any package may import it.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// ErrDenied is returned (wrapped) by Control when a connection would reach an address the
// deny list forbids or a non-empty allow list does not allow.
var ErrDenied = errors.New("address denied by network policy")

// Guard is a network policy: deny is checked first; an empty allow list allows everything
// not denied. It is immutable and safe for concurrent use.
type Guard struct {
	allow, deny []netip.Prefix
}

// New returns a Guard for the CIDRs in allow and deny (such as "10.0.0.0/8" or "::1/128";
// host bits are ignored). It returns an error naming the first CIDR that does not parse.
func New(allow, deny []string) (*Guard, error) {
	g := &Guard{}
	for _, list := range []struct {
		in  []string
		out *[]netip.Prefix
	}{{allow, &g.allow}, {deny, &g.deny}} {
		for _, s := range list.in {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("parsing network %q: %w", s, err)
			}
			*list.out = append(*list.out, p.Masked())
		}
	}
	return g, nil
}

// Allowed reports whether ip may be connected to. IPv4-mapped IPv6 addresses are judged as
// the IPv4 address they carry, so ::ffff:10.0.0.1 is as denied as 10.0.0.1.
func (g *Guard) Allowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range g.deny {
		if p.Contains(ip) {
			return false
		}
	}
	if len(g.allow) == 0 {
		return true
	}
	for _, p := range g.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Control is a net.Dialer.ControlContext hook. It runs after DNS resolution, just before
// connect, on the exact address being dialled, and returns ErrDenied (wrapped) for a
// network other than TCP or an address the policy refuses, so no connection is attempted.
func (g *Guard) Control(_ context.Context, network, address string, _ syscall.RawConn) error {
	if network != "tcp4" && network != "tcp6" {
		return fmt.Errorf("%w: network %s", ErrDenied, network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unparsable address %s", ErrDenied, address)
	}
	if !g.Allowed(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrDenied, address)
	}
	return nil
}
