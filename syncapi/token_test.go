package syncapi

import "testing"

func TestParseToken(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    Token
		wantErr bool
	}{
		{in: "s1_2_3_4_5", want: Token{Rooms: 1, AccountData: 2, Receipts: 3, Typing: 4, Presence: 5}},
		{in: "s7_8", want: Token{Rooms: 7, AccountData: 8}}, // a token from before receipts, typing and presence
		{in: "s9", want: Token{Rooms: 9}},
		{in: "s1_2_3_4_5_6", want: Token{Rooms: 1, AccountData: 2, Receipts: 3, Typing: 4, Presence: 5}}, // a newer server's extra field
		{in: "1_2", wantErr: true},
		{in: "s1_x", wantErr: true},
		{in: "s-1", wantErr: true},
		{in: "", wantErr: true},
	} {
		got, err := ParseToken(c.in)
		if (err != nil) != c.wantErr {
			t.Errorf("ParseToken(%q): got error %v; want error %v", c.in, err, c.wantErr)
			continue
		}
		if got != c.want {
			t.Errorf("ParseToken(%q): got %+v; want %+v", c.in, got, c.want)
		}
	}
}

func TestTokenRoundTrip(t *testing.T) {
	tok := Token{Rooms: 12, AccountData: 3, Receipts: 40, Typing: 1700000000000, Presence: 9}
	got, err := ParseToken(tok.String())
	if err != nil || got != tok {
		t.Fatalf("ParseToken(%q): got %+v, %v; want %+v", tok.String(), got, err, tok)
	}
	if !tok.after(Token{Rooms: 12, AccountData: 3, Receipts: 40, Typing: 1700000000000, Presence: 8}) {
		t.Errorf("after: a token ahead in presence only is not after")
	}
	if tok.after(tok) {
		t.Errorf("after: a token is after itself")
	}
}
