package netguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/myelin-chat/myelin/internal/config"
	"github.com/myelin-chat/myelin/internal/testkit"
)

func TestAllowed(t *testing.T) {
	def := config.Default().FederationAPI
	g, err := New(def.AllowNetworks, def.DenyNetworks)
	testkit.Must(t, err, "New default")
	open, err := New([]string{"0.0.0.0/0", "::/0"}, nil)
	testkit.Must(t, err, "New open")
	onlyTen, err := New([]string{"10.0.0.0/8"}, []string{"10.9.0.0/16"})
	testkit.Must(t, err, "New onlyTen")
	tests := []struct {
		ip                         string
		wantDef, wantOpen, wantTen bool
	}{
		{"127.0.0.1", false, true, false},
		{"10.1.2.3", false, true, true},
		{"10.9.1.1", false, true, false},
		{"192.168.1.1", false, true, false},
		{"169.254.169.254", false, true, false},
		{"::1", false, true, false},
		{"::ffff:10.0.0.1", false, true, true},
		{"::ffff:127.0.0.1", false, true, false},
		{"fd00::1", false, true, false},
		{"8.8.8.8", true, true, false},
	}
	for _, tt := range tests {
		ip := netip.MustParseAddr(tt.ip)
		if got := g.Allowed(ip); got != tt.wantDef {
			t.Errorf("default policy, %s: got allowed=%v, want %v", tt.ip, got, tt.wantDef)
		}
		if got := open.Allowed(ip); got != tt.wantOpen {
			t.Errorf("open policy, %s: got allowed=%v, want %v", tt.ip, got, tt.wantOpen)
		}
		if got := onlyTen.Allowed(ip); got != tt.wantTen {
			t.Errorf("10/8 policy, %s: got allowed=%v, want %v", tt.ip, got, tt.wantTen)
		}
	}
}

func TestNewRejectsBadCIDR(t *testing.T) {
	if _, err := New([]string{"not-a-cidr"}, nil); err == nil {
		t.Fatal("New accepted an unparsable CIDR")
	}
	// Host bits are ignored, as in the sample config's "127.0.0.1/8".
	g, err := New(nil, []string{"127.0.0.1/8"})
	testkit.Must(t, err, "New 127.0.0.1/8")
	if g.Allowed(netip.MustParseAddr("127.9.9.9")) {
		t.Error("127.9.9.9 allowed, want denied by 127.0.0.1/8")
	}
}

func TestControl(t *testing.T) {
	def := config.Default().FederationAPI
	g, err := New(def.AllowNetworks, def.DenyNetworks)
	testkit.Must(t, err, "New")
	tests := []struct {
		network, address string
		wantOK           bool
	}{
		{"tcp4", "8.8.8.8:443", true},
		{"tcp6", "[2001:4860:4860::8888]:443", true},
		{"tcp4", "127.0.0.1:80", false},
		{"tcp6", "[::1]:80", false},
		{"udp4", "8.8.8.8:53", false},
		{"tcp4", "nonsense", false},
	}
	for _, tt := range tests {
		err := g.Control(context.Background(), tt.network, tt.address, nil)
		if tt.wantOK != (err == nil) || (!tt.wantOK && !errors.Is(err, ErrDenied)) {
			t.Errorf("Control(%s, %s): got %v, want ok=%v", tt.network, tt.address, err, tt.wantOK)
		}
	}
}

// TestDialRefused checks that a dialer using Control never connects to a denied address.
func TestDialRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	testkit.Must(t, err, "listen")
	t.Cleanup(func() { _ = ln.Close() })
	g, err := New(nil, []string{"127.0.0.0/8"})
	testkit.Must(t, err, "New")
	d := net.Dialer{ControlContext: g.Control}
	_, err = d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if !errors.Is(err, ErrDenied) {
		t.Fatalf("dial: got %v, want ErrDenied", err)
	}
}
