package config

import (
	"sort"
	"strings"
)

// Warning messages for Dendrite keys Myelin does not use.
const (
	notUsedYet  = "not used by Myelin yet"
	notUsedDB   = "not used by Myelin: every component uses global.database"
	notUsedHTTP = "not used by Myelin: it serves every API on myelin.listen (and myelin.listen_tls)"
	notUsedNATS = "not used by Myelin: it has no NATS JetStream"
	notUsedKey  = "not used by Myelin: the key ID is read from the private_key PEM file, as in Dendrite"
	notUsedOld  = "not used by Myelin, nor by current Dendrite (an old Dendrite setting)"
)

// dendriteKey is one key of Dendrite's config schema that Myelin does not have.
type dendriteKey struct {
	// opaque keys are warned about as a whole; what is below them is not checked.
	opaque bool
	// message is the Warning's message.
	message string
}

// dendriteSchema is the part of Dendrite's config schema Myelin does not use: every key
// of the current schema (element-hq/dendrite setup/config) plus keys of older version 2
// files, which Dendrite itself silently ignored and which real files therefore still carry.
// Paths are normalised: list indexes are written "[]".
type dendriteSchema struct {
	keys map[string]dendriteKey
	// children maps a path ("" for the top level) to the Dendrite-only keys directly below it.
	children map[string][]string
}

// newDendriteSchema builds the table. It is built per Parse rather than kept in a
// package variable; it is small.
func newDendriteSchema() *dendriteSchema {
	s := &dendriteSchema{keys: map[string]dendriteKey{}, children: map[string][]string{}}

	s.leaves("global", notUsedYet, "well_known_sliding_sync_proxy", "trusted_third_party_id_servers")
	s.leaves("global", notUsedKey, "key_id")
	s.leaves("global.jetstream", notUsedNATS, "addresses", "disable_tls_validation", "storage_path",
		"topic_prefix", "js_domain", "in_memory", "credentials_path")
	s.leaves("global.sentry", notUsedYet, "enabled", "dsn", "environment")
	s.leaves("global.dns_cache", notUsedYet, "enabled", "cache_size", "cache_lifetime")
	s.leaves("global.server_notices", notUsedYet, "enabled", "local_part", "display_name", "avatar_url", "room_name")
	s.leaves("global.report_stats", notUsedYet, "enabled", "endpoint")
	s.leaves("global.cache", notUsedYet, "max_size_estimated", "max_age")
	s.opaque("global.kafka", notUsedOld)

	s.leaves("app_service_api", notUsedYet, "disable_tls_validation", "legacy_auth", "legacy_paths")
	s.opaque("app_service_api.database", notUsedDB)
	s.opaque("app_service_api.internal_api", notUsedHTTP)

	s.leaves("client_api", notUsedYet, "enable_registration_captcha", "recaptcha_public_key",
		"recaptcha_private_key", "recaptcha_bypass_secret", "recaptcha_siteverify_api",
		"recaptcha_api_js_url", "recaptcha_form_field", "recaptcha_sitekey_class")
	s.leaves("client_api.turn", notUsedYet, "turn_user_lifetime", "turn_uris", "turn_shared_secret",
		"turn_username", "turn_password")
	s.opaque("client_api.internal_api", notUsedHTTP)
	s.opaque("client_api.external_api", notUsedHTTP)

	s.leaves("federation_api", notUsedYet, "enable_relays", "p2p_retries_until_assumed_offline")
	s.leaves("federation_api", notUsedOld, "federation_certificates")
	s.leaves("federation_api.proxy_outbound", notUsedOld, "enabled", "protocol", "host", "port")
	s.opaque("federation_api.database", notUsedDB)
	s.opaque("federation_api.internal_api", notUsedHTTP)
	s.opaque("federation_api.external_api", notUsedHTTP)

	s.opaque("key_server.database", notUsedDB)
	s.opaque("key_server.internal_api", notUsedHTTP)

	s.opaque("media_api.database", notUsedDB)
	s.opaque("media_api.internal_api", notUsedHTTP)
	s.opaque("media_api.external_api", notUsedHTTP)

	s.leaves("mscs", notUsedYet, "mscs")
	s.opaque("mscs.database", notUsedDB)

	s.opaque("relay_api.database", notUsedDB)

	s.opaque("room_server.database", notUsedDB)
	s.opaque("room_server.internal_api", notUsedHTTP)

	s.leaves("sync_api.search", notUsedYet, "enabled", "index_path", "in_memory", "language")
	s.leaves("sync_api.fulltext", notUsedOld, "enabled", "index_path", "language")
	s.opaque("sync_api.database", notUsedDB)
	s.opaque("sync_api.internal_api", notUsedHTTP)
	s.opaque("sync_api.external_api", notUsedHTTP)

	s.leaves("user_api", notUsedYet, "push_gateway_disable_tls_validation", "worker_count")
	s.opaque("user_api.account_database", notUsedDB)
	s.opaque("user_api.device_database", notUsedOld)
	s.opaque("user_api.pusher_database", notUsedOld)
	s.opaque("user_api.internal_api", notUsedHTTP)

	s.leaves("tracing", notUsedYet, "enabled")
	s.opaque("tracing.jaeger", notUsedYet)

	// Sections of Dendrite's older component split (before v0.6 merged them).
	s.opaque("edu_server", notUsedOld)
	s.opaque("federation_sender", notUsedOld)
	s.opaque("signing_key_server", notUsedOld)
	s.opaque("server_key_api", notUsedOld)

	for _, c := range s.children {
		sort.Strings(c)
	}
	return s
}

// leaves adds keys below parent, and parent itself as a section when Myelin lacks it.
func (s *dendriteSchema) leaves(parent, message string, names ...string) {
	for _, n := range names {
		s.add(parent+"."+n, dendriteKey{message: message})
	}
}

// opaque adds path as a key whose contents are not checked.
func (s *dendriteSchema) opaque(path, message string) {
	s.add(path, dendriteKey{opaque: true, message: message})
}

func (s *dendriteSchema) add(path string, k dendriteKey) {
	s.keys[path] = k
	// Register each ancestor as a section so that Myelin-unknown sections
	// (global.cache, tracing) lead down to their keys.
	for {
		i := strings.LastIndexByte(path, '.')
		parent, name := "", path
		if i >= 0 {
			parent, name = path[:i], path[i+1:]
		}
		if !contains(s.children[parent], name) {
			s.children[parent] = append(s.children[parent], name)
		}
		if i < 0 {
			return
		}
		if _, ok := s.keys[parent]; !ok {
			s.keys[parent] = dendriteKey{message: k.message}
		}
		path = parent
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// normalise turns "media_api.thumbnail_sizes[2].method" into "media_api.thumbnail_sizes[].method".
func normalise(path string) string {
	if !strings.Contains(path, "[") {
		return path
	}
	var b strings.Builder
	inIndex := false
	for _, r := range path {
		switch {
		case r == '[':
			inIndex = true
			b.WriteRune(r)
		case r == ']':
			inIndex = false
			b.WriteRune(r)
		case !inIndex:
			b.WriteRune(r)
		}
	}
	return b.String()
}
