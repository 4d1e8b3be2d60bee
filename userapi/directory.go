package userapi

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"unicode"
)

// DirectoryEntry is a local user found by SearchProfiles.
type DirectoryEntry struct {
	UserID      string
	DisplayName string
	AvatarURL   string
}

// SearchWords splits a user-directory search term, a display name or a user ID into
// lower-case words of letters and digits, as Synapse's user directory tokenises them.
func SearchWords(s string) []string {
	return strings.FieldsFunc(strings.ToLower(s), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
}

// SearchProfiles returns up to limit active local users each of whose term words is the
// prefix of a word of their global display name or user ID, ordered by user ID. A term with
// no words matches nobody.
func (s *Service) SearchProfiles(ctx context.Context, term string, limit int) ([]DirectoryEntry, error) {
	words := SearchWords(term)
	if len(words) == 0 || limit <= 0 {
		return nil, nil
	}
	// Narrow in SQL on the first word, then match every word exactly here.
	like := "%" + strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(words[0]) + "%"
	rows, err := s.db.Query(ctx, `SELECT p.user_id, p.displayname, p.avatar_url FROM profiles p
		JOIN accounts a ON a.user_id = p.user_id
		WHERE a.deactivated = FALSE AND (LOWER(p.user_id) LIKE $1 ESCAPE '\' OR LOWER(COALESCE(p.displayname, '')) LIKE $1 ESCAPE '\')
		ORDER BY p.user_id`, like)
	if err != nil {
		return nil, fmt.Errorf("searching profiles: %w", err)
	}
	defer rows.Close()
	var out []DirectoryEntry
	for rows.Next() && len(out) < limit {
		var e DirectoryEntry
		var name, avatar sql.NullString
		if err := rows.Scan(&e.UserID, &name, &avatar); err != nil {
			return nil, fmt.Errorf("searching profiles: %w", err)
		}
		e.DisplayName, e.AvatarURL = name.String, avatar.String
		if matchesWords(words, append(SearchWords(e.DisplayName), SearchWords(e.UserID)...)) {
			out = append(out, e)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("searching profiles: %w", err)
	}
	return out, nil
}

// matchesWords reports whether every term word prefixes one of words.
func matchesWords(term, words []string) bool {
	for _, t := range term {
		found := false
		for _, w := range words {
			if strings.HasPrefix(w, t) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
