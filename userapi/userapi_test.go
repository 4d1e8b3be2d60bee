package userapi_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/myelin-chat/myelin/internal/bus"
	"github.com/myelin-chat/myelin/internal/sqldb"
	"github.com/myelin-chat/myelin/internal/testkit"
	"github.com/myelin-chat/myelin/userapi"
)

func newService(t *testing.T, db *sqldb.DB, lifetime time.Duration) (*userapi.Service, *bus.Stream) {
	t.Helper()
	ad := bus.NewStream(0)
	s, err := userapi.New(userapi.Config{ServerName: "test.local", BCryptCost: 4, AccessTokenLifetime: lifetime},
		db, ad, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("userapi.New: %v", err)
	}
	return s, ad
}

func TestAccountsAndPasswords(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		s, _ := newService(t, db, 0)
		id, err := s.CreateAccount(ctx, userapi.NewAccount{Localpart: "alice", Password: "pw1"})
		testkit.Must(t, err, "create")
		if id != "@alice:test.local" {
			t.Fatalf("got %q; want @alice:test.local", id)
		}
		if _, err := s.CreateAccount(ctx, userapi.NewAccount{Localpart: "alice", Password: "x"}); !errors.Is(err, userapi.ErrUserInUse) {
			t.Fatalf("duplicate: got %v; want ErrUserInUse", err)
		}
		if _, err := s.CreateAccount(ctx, userapi.NewAccount{Localpart: "bob", Password: strings.Repeat("p", 73)}); !errors.Is(err, userapi.ErrPasswordLong) {
			t.Fatalf("73-byte password: got %v; want ErrPasswordLong", err)
		}
		for _, c := range []struct {
			user, pw string
			want     error
		}{
			{"@alice:test.local", "pw1", nil},
			{"@alice:test.local", "nope", userapi.ErrBadPassword},
			{"@nobody:test.local", "pw1", userapi.ErrNoSuchUser},
		} {
			if err := s.CheckPassword(ctx, c.user, c.pw); !errors.Is(err, c.want) {
				t.Errorf("CheckPassword(%s, %s): got %v; want %v", c.user, c.pw, err, c.want)
			}
		}
		p, err := s.Profile(ctx, id)
		testkit.Must(t, err, "profile")
		if p.DisplayName != "alice" {
			t.Errorf("default display name: got %q; want alice", p.DisplayName)
		}
		testkit.Must(t, s.Deactivate(ctx, id), "deactivate")
		if err := s.CheckPassword(ctx, id, "pw1"); !errors.Is(err, userapi.ErrDeactivated) {
			t.Errorf("after deactivation: got %v; want ErrDeactivated", err)
		}
		if taken, _ := s.Exists(ctx, "alice"); !taken {
			t.Error("deactivated user ID should stay taken")
		}
	})
}

func TestSessionsDevicesAndRefresh(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		s, _ := newService(t, db, time.Hour)
		id, err := s.CreateAccount(ctx, userapi.NewAccount{Localpart: "carol", Password: "pw"})
		testkit.Must(t, err, "create")
		a, err := s.StartSession(ctx, userapi.LoginRequest{UserID: id, DeviceID: "PHONE", DisplayName: "phone"})
		testkit.Must(t, err, "login a")
		b, err := s.StartSession(ctx, userapi.LoginRequest{UserID: id, Refresh: true})
		testkit.Must(t, err, "login b")
		if b.RefreshToken == "" || b.ExpiresIn != time.Hour {
			t.Fatalf("refresh login: got refresh=%q expires=%v; want a token and 1h", b.RefreshToken, b.ExpiresIn)
		}
		dev, err := s.Authenticate(ctx, a.AccessToken)
		testkit.Must(t, err, "authenticate a")
		if dev.UserID != id || dev.DeviceID != "PHONE" {
			t.Fatalf("got %s/%s; want %s/PHONE", dev.UserID, dev.DeviceID, id)
		}
		// Logging in again with the same device ID revokes its old token.
		a2, err := s.StartSession(ctx, userapi.LoginRequest{UserID: id, DeviceID: "PHONE"})
		testkit.Must(t, err, "login a again")
		if _, err := s.Authenticate(ctx, a.AccessToken); !errors.Is(err, userapi.ErrUnknownToken) {
			t.Fatalf("old token of a reused device: got %v; want ErrUnknownToken", err)
		}
		devs, err := s.Devices(ctx, id)
		testkit.Must(t, err, "devices")
		if len(devs) != 2 {
			t.Fatalf("devices: got %d; want 2", len(devs))
		}
		// Refresh: the old refresh token works until the new access token is used.
		r1, err := s.Refresh(ctx, b.RefreshToken)
		testkit.Must(t, err, "refresh")
		if _, err := s.Authenticate(ctx, b.AccessToken); !errors.Is(err, userapi.ErrUnknownToken) {
			t.Errorf("replaced access token: got %v; want ErrUnknownToken", err)
		}
		r2, err := s.Refresh(ctx, b.RefreshToken) // a retry after a lost response
		testkit.Must(t, err, "retry refresh")
		_, err = s.Authenticate(ctx, r2.AccessToken)
		testkit.Must(t, err, "use refreshed token")
		if _, err := s.Refresh(ctx, b.RefreshToken); !errors.Is(err, userapi.ErrUnknownToken) {
			t.Errorf("old refresh token after use of the new one: got %v; want ErrUnknownToken", err)
		}
		_ = r1
		testkit.Must(t, s.SetPassword(ctx, id, "new", true, "PHONE"), "set password")
		if _, err := s.Authenticate(ctx, a2.AccessToken); err != nil {
			t.Errorf("kept device: got %v; want its token to work", err)
		}
		if _, err := s.Authenticate(ctx, r2.AccessToken); !errors.Is(err, userapi.ErrUnknownToken) {
			t.Errorf("other device after password change: got %v; want ErrUnknownToken", err)
		}
	})
}

func TestExpiredAccessToken(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		s, _ := newService(t, db, time.Millisecond)
		id, _ := s.CreateAccount(ctx, userapi.NewAccount{Localpart: "dave", Password: "pw"})
		sess, err := s.StartSession(ctx, userapi.LoginRequest{UserID: id, Refresh: true})
		testkit.Must(t, err, "login")
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := s.Authenticate(ctx, sess.AccessToken)
			if errors.Is(err, userapi.ErrExpiredToken) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("token never expired; last error %v", err)
			}
		}
	})
}

func TestAccountDataStream(t *testing.T) {
	testkit.EachDB(t, func(t *testing.T, db *sqldb.DB) {
		ctx := context.Background()
		s, stream := newService(t, db, 0)
		u := "@erin:test.local"
		testkit.Must(t, s.SetAccountData(ctx, u, "", "a", []byte(`{"v":1}`)), "set a")
		p1 := stream.Pos()
		testkit.Must(t, s.SetAccountData(ctx, u, "!r", "b", []byte(`{"v":2}`)), "set b")
		testkit.Must(t, s.SetAccountData(ctx, u, "", "a", []byte(`{"v":3}`)), "overwrite a")
		got, err := s.AccountDataSince(ctx, u, p1, stream.Pos())
		testkit.Must(t, err, "since")
		if len(got) != 2 || got[0].Type != "b" || got[1].Type != "a" || string(got[1].Content) != `{"v":3}` {
			t.Fatalf("got %+v; want b then a with v=3", got)
		}
		c, err := s.AccountData(ctx, u, "", "a")
		testkit.Must(t, err, "get")
		if string(c) != `{"v":3}` {
			t.Fatalf("got %s; want {\"v\":3}", c)
		}
		if _, err := s.AccountData(ctx, u, "", "missing"); !errors.Is(err, userapi.ErrNotFound) {
			t.Fatalf("missing: got %v; want ErrNotFound", err)
		}
	})
}
