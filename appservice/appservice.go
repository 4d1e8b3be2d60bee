// Package appservice holds the application services registered with this server: it reads
// their registration files (the YAML format of the Application Service API), checks them,
// and answers the questions the Client-Server API asks of them: which service an as_token
// belongs to, which users a service may act as, and which namespaces are exclusive.
//
// Built so far is what the Client-Server API extensions need (identity assertion with
// user_id and device_id, timestamp massaging, m.login.application_service registration,
// exclusive namespaces). Not built yet: pushing events to services
// (PUT /_matrix/app/v1/transactions), querying them for users, aliases and third-party
// protocols, ephemeral and to-device delivery, and rate_limited (no client endpoint that
// sends events is rate limited yet). The url and hs_token of a registration are read and
// checked but not used.
//
// It imports only internal packages; clientapi and syncapi may import it.
package appservice

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/myelin-chat/myelin/internal/matrix"
)

// Service is one application service's registration.
type Service struct {
	// ID identifies the service; it is unique among the server's services.
	ID string
	// URL is where the service listens ("" when it wants no traffic).
	URL string
	// ASToken is the token the service authenticates to this server with.
	ASToken string
	// HSToken is the token this server authenticates to the service with.
	HSToken string
	// SenderLocalpart is the localpart of the service's own user.
	SenderLocalpart string
	// Sender is the service's own user ID, @SenderLocalpart:server_name.
	Sender string
	// Users, Aliases and Rooms are the namespaces the service is interested in.
	Users, Aliases, Rooms []Namespace
	// RateLimited says whether requests from the service's users are rate limited.
	RateLimited bool
	// Protocols are the third-party protocols the service provides.
	Protocols []string
	// ReceiveEphemeral says whether the service wants ephemeral data pushed to it.
	ReceiveEphemeral bool
	// File is the registration file the service was read from ("" when built by hand).
	File string

	serverName string
}

// Namespace is one entry of a namespace list: a regular expression and whether the service
// claims what it matches exclusively.
type Namespace struct {
	// Exclusive stops other users and services from creating what Regex matches.
	Exclusive bool
	// Regex is the expression as written in the registration.
	Regex string
	re    *regexp.Regexp
}

// match reports whether s matches the namespace. As in Synapse (Python's re.match), the
// expression must match at the start of s but may stop before its end: "@_irc_" covers
// "@_irc_alice:example.org".
func (n Namespace) match(s string) bool { return n.re.MatchString(s) }

// compile prepares n.re from n.Regex.
func (n *Namespace) compile() error {
	re, err := regexp.Compile(`^(?:` + n.Regex + `)`)
	if err != nil {
		return err
	}
	n.re = re
	return nil
}

// LogValue keeps the tokens out of logs.
func (s *Service) LogValue() slog.Value {
	return slog.GroupValue(slog.String("id", s.ID), slog.String("sender", s.Sender), slog.String("file", s.File))
}

// isLocalUser reports whether userID is a user ID on this server.
func (s *Service) isLocalUser(userID string) bool {
	_, server, err := matrix.SplitID('@', userID)
	return err == nil && server == s.serverName
}

// IsInterestedInUser reports whether userID is the service's sender or a local user in one
// of its user namespaces: the users it may act as and register.
func (s *Service) IsInterestedInUser(userID string) bool {
	if userID == s.Sender {
		return true
	}
	return s.isLocalUser(userID) && matchAny(s.Users, userID, false)
}

// IsExclusiveUser reports whether userID is the service's sender or a local user in one of
// its exclusive user namespaces.
func (s *Service) IsExclusiveUser(userID string) bool {
	if userID == s.Sender {
		return true
	}
	return s.isLocalUser(userID) && matchAny(s.Users, userID, true)
}

// IsInterestedInAlias reports whether alias is in one of the service's alias namespaces.
func (s *Service) IsInterestedInAlias(alias string) bool { return matchAny(s.Aliases, alias, false) }

// IsExclusiveAlias reports whether alias is in one of the service's exclusive alias namespaces.
func (s *Service) IsExclusiveAlias(alias string) bool { return matchAny(s.Aliases, alias, true) }

// IsInterestedInRoomID reports whether roomID is in one of the service's room namespaces.
func (s *Service) IsInterestedInRoomID(roomID string) bool { return matchAny(s.Rooms, roomID, false) }

// matchAny reports whether one of list (only the exclusive ones when exclusive) matches s.
func matchAny(list []Namespace, s string, exclusive bool) bool {
	for _, n := range list {
		if (n.Exclusive || !exclusive) && n.match(s) {
			return true
		}
	}
	return false
}

// registration is the YAML form of a registration file. Keys it does not name (such as
// Synapse's and mautrix's extensions) are ignored, as Synapse and Dendrite ignore them.
type registration struct {
	ID              *string `yaml:"id"`
	URL             *string `yaml:"url"`
	ASToken         *string `yaml:"as_token"`
	HSToken         *string `yaml:"hs_token"`
	SenderLocalpart *string `yaml:"sender_localpart"`
	Namespaces      *struct {
		Users   []yamlNamespace `yaml:"users"`
		Aliases []yamlNamespace `yaml:"aliases"`
		Rooms   []yamlNamespace `yaml:"rooms"`
	} `yaml:"namespaces"`
	RateLimited      *bool    `yaml:"rate_limited"`
	Protocols        []string `yaml:"protocols"`
	ReceiveEphemeral *bool    `yaml:"receive_ephemeral"`
	// The names receive_ephemeral had before Matrix 1.13 (MSC2409), which registrations
	// written for Synapse still use.
	PushEphemeral        *bool `yaml:"push_ephemeral"`
	PushEphemeralMSC2409 *bool `yaml:"de.sorunome.msc2409.push_ephemeral"`
}

type yamlNamespace struct {
	Exclusive *bool   `yaml:"exclusive"`
	Regex     *string `yaml:"regex"`
}

// Parse reads one registration from data for a server named serverName. file names the
// registration in errors. It returns an error listing every problem in the registration:
// a missing required key (id, url, as_token, hs_token, sender_localpart, namespaces), an
// invalid sender_localpart, or a namespace without a boolean exclusive or with a regex that
// does not compile.
func Parse(data []byte, file, serverName string) (*Service, error) {
	var reg registration
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&reg); err != nil {
		return nil, fmt.Errorf("application service registration %s: %w", file, err)
	}
	var problems []string
	problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	required := func(name string, v *string) string {
		if v == nil || *v == "" {
			problem("%s is required", name)
			return ""
		}
		return *v
	}
	s := &Service{File: file, serverName: serverName, RateLimited: true, Protocols: reg.Protocols}
	s.ID = required("id", reg.ID)
	s.ASToken = required("as_token", reg.ASToken)
	s.HSToken = required("hs_token", reg.HSToken)
	s.SenderLocalpart = required("sender_localpart", reg.SenderLocalpart)
	if reg.URL == nil {
		// The key is required; its value may be null for a service that wants no traffic.
		if !hasKey(data, "url") {
			problem("url is required (null for a service that wants no traffic)")
		}
	} else {
		s.URL = strings.TrimRight(*reg.URL, "/")
	}
	if s.SenderLocalpart != "" {
		s.Sender = matrix.UserID(s.SenderLocalpart, serverName)
		if !validHistoricalLocalpart(s.SenderLocalpart) || len(s.Sender) > 255 {
			problem("sender_localpart %q is not a valid user ID localpart", s.SenderLocalpart)
		}
	}
	if reg.RateLimited != nil {
		s.RateLimited = *reg.RateLimited
	}
	for _, b := range []*bool{reg.PushEphemeralMSC2409, reg.PushEphemeral, reg.ReceiveEphemeral} {
		if b != nil {
			s.ReceiveEphemeral = *b
		}
	}
	if reg.Namespaces == nil {
		problem("namespaces is required")
	} else {
		convert := func(kind string, in []yamlNamespace) []Namespace {
			var out []Namespace
			for i, n := range in {
				if n.Exclusive == nil {
					problem("namespaces.%s[%d].exclusive must be true or false", kind, i)
					continue
				}
				if n.Regex == nil {
					problem("namespaces.%s[%d].regex is required", kind, i)
					continue
				}
				ns := Namespace{Exclusive: *n.Exclusive, Regex: *n.Regex}
				if err := ns.compile(); err != nil {
					problem("namespaces.%s[%d].regex: %v", kind, i, err)
					continue
				}
				out = append(out, ns)
			}
			return out
		}
		s.Users = convert("users", reg.Namespaces.Users)
		s.Aliases = convert("aliases", reg.Namespaces.Aliases)
		s.Rooms = convert("rooms", reg.Namespaces.Rooms)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("application service registration %s: %s", file, strings.Join(problems, "; "))
	}
	return s, nil
}

// hasKey reports whether the YAML mapping in data has key at its top level.
func hasKey(data []byte, key string) bool {
	var m map[string]any
	if yaml.Unmarshal(data, &m) != nil {
		return false
	}
	_, ok := m[key]
	return ok
}

// validHistoricalLocalpart reports whether s fits the historical user ID grammar, which
// existing bridges' sender localparts may use: printable ASCII except ':'.
func validHistoricalLocalpart(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == ':' {
			return false
		}
	}
	return true
}

// Registry is the set of application services registered with this server. It is
// read-only after New and safe for concurrent use. A nil *Registry has no services.
type Registry struct {
	services []*Service
	// byToken maps the SHA-256 of each as_token to its service, so that looking a token up
	// takes no time that depends on how much of it matches a registered one.
	byToken map[[sha256.Size]byte]*Service
}

// Load reads the registration files at paths for a server named serverName and returns
// their registry. It returns an error naming the file for a file that cannot be read or
// parsed (see Parse), and for an id, as_token or hs_token that two services share.
func Load(paths []string, serverName string) (*Registry, error) {
	var services []*Service
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading application service registration: %w", err)
		}
		s, err := Parse(data, p, serverName)
		if err != nil {
			return nil, err
		}
		services = append(services, s)
	}
	return New(services...)
}

// ErrDuplicate is wrapped by New's error when two services share an id, as_token or
// hs_token, or a service's as_token equals its hs_token.
var ErrDuplicate = errors.New("must be unique")

// New returns the registry of services. It returns an error wrapping ErrDuplicate when two
// services share an id, as_token or hs_token, or one uses the same token both ways.
func New(services ...*Service) (*Registry, error) {
	r := &Registry{byToken: map[[sha256.Size]byte]*Service{}}
	ids := map[string]*Service{}
	hsTokens := map[[sha256.Size]byte]*Service{}
	name := func(s *Service) string {
		if s.File != "" {
			return fmt.Sprintf("%q (%s)", s.ID, s.File)
		}
		return fmt.Sprintf("%q", s.ID)
	}
	for _, s := range services {
		if o := ids[s.ID]; o != nil {
			return nil, fmt.Errorf("application service %s: id %w: %s has it too", name(s), ErrDuplicate, name(o))
		}
		ids[s.ID] = s
		as, hs := sha256.Sum256([]byte(s.ASToken)), sha256.Sum256([]byte(s.HSToken))
		if as == hs {
			return nil, fmt.Errorf("application service %s: as_token and hs_token %w", name(s), ErrDuplicate)
		}
		if o := r.byToken[as]; o != nil {
			return nil, fmt.Errorf("application service %s: as_token %w: %s has it too", name(s), ErrDuplicate, name(o))
		}
		if o := hsTokens[hs]; o != nil {
			return nil, fmt.Errorf("application service %s: hs_token %w: %s has it too", name(s), ErrDuplicate, name(o))
		}
		if o := r.byToken[hs]; o != nil {
			return nil, fmt.Errorf("application service %s: hs_token is the as_token of %s; tokens %w", name(s), name(o), ErrDuplicate)
		}
		if o := hsTokens[as]; o != nil {
			return nil, fmt.Errorf("application service %s: as_token is the hs_token of %s; tokens %w", name(s), name(o), ErrDuplicate)
		}
		r.byToken[as], hsTokens[hs] = s, s
		r.services = append(r.services, s)
	}
	return r, nil
}

// Services returns every registered service, in the order they were given.
func (r *Registry) Services() []*Service {
	if r == nil {
		return nil
	}
	return r.services
}

// ByToken returns the service whose as_token is token, or nil. The lookup is by the
// token's SHA-256, so its time does not depend on how much of a registered token matches.
func (r *Registry) ByToken(token string) *Service {
	if r == nil || len(r.byToken) == 0 || token == "" {
		return nil
	}
	return r.byToken[sha256.Sum256([]byte(token))]
}

// ExclusiveUserOwner returns a service that claims userID exclusively (as its sender or in
// an exclusive user namespace), or nil when none does.
func (r *Registry) ExclusiveUserOwner(userID string) *Service {
	for _, s := range r.Services() {
		if s.IsExclusiveUser(userID) {
			return s
		}
	}
	return nil
}

// ExclusiveAliasOwner returns a service that claims alias in an exclusive alias namespace,
// or nil when none does.
func (r *Registry) ExclusiveAliasOwner(alias string) *Service {
	for _, s := range r.Services() {
		if s.IsExclusiveAlias(alias) {
			return s
		}
	}
	return nil
}

// InterestedInUser returns the services interested in userID (see
// Service.IsInterestedInUser).
func (r *Registry) InterestedInUser(userID string) []*Service {
	var out []*Service
	for _, s := range r.Services() {
		if s.IsInterestedInUser(userID) {
			out = append(out, s)
		}
	}
	return out
}
