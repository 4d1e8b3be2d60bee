// Package complement_test checks dendrite.yaml, the configuration baked into the Complement
// image, against the strict config loader, so that it cannot rot. The directory holds no Go
// code besides this test.
package complement_test

import (
	"testing"

	"github.com/myelin-chat/myelin/internal/config"
)

func TestConfig(t *testing.T) {
	c, warnings, err := config.Load("dendrite.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("warning: %v", w)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"shared secret", c.ClientAPI.RegistrationSharedSecret, "complement"},
		{"registration disabled", c.ClientAPI.RegistrationDisabled, false},
		{"rate limiting", c.ClientAPI.RateLimiting.Enabled, false},
		{"bcrypt cost", c.UserAPI.BCryptCost, 4},
		{"data dir", c.Myelin.DataDir, "/data"},
		{"database", c.Global.Database.ConnectionString, "file:/data/myelin.db"},
		{"signing key", c.Global.PrivateKeyPath, "/data/matrix_key.pem"},
		{"media", c.MediaAPI.BasePath, "/data/media"},
		{"listen", c.Myelin.Listen, ":8008"},
		// Complement's homeservers and its own servers are on private Docker networks.
		{"deny networks", len(c.FederationAPI.DenyNetworks), 0},
		{"TLS validation disabled", c.FederationAPI.DisableTLSValidation, true},
		{"notaries", len(c.FederationAPI.KeyPerspectives), 0},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v; want %v", tt.name, tt.got, tt.want)
		}
	}
}
