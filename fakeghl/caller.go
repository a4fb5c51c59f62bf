package fakeghl

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// caller is what the stand-in derives from one Authorization header, once per header.
type caller struct {
	marker   string // CallerOf
	prefix   []byte // `{"_caller":"<marker>",`
	scope    string // ScopeOf
	location string // the Location a location token is bound to, else ""
	limits   *window
}

// CallerOf is the value of the "_caller" field the stand-in adds to its JSON answers: the
// first 16 hex digits of SHA-256 of the whole Authorization header.
func CallerOf(authorization string) string {
	sum := sha256.Sum256([]byte(authorization))
	return hex.EncodeToString(sum[:8])
}

// ScopeOf is the rate-limit scope GHL charges a request to: for an OAuth JWT its
// authClass and authClassId (decoded, not verified) plus the app (oauthMeta.client, else
// sourceId) when present, e.g. "Location:ve9EPM428h8vShlRW1KT app:64f8…"; for an opaque
// token "token:" and the first 16 hex digits of SHA-256 of the token.
func ScopeOf(authorization string) string {
	s, _ := scopeOf(authorization)
	return s
}

// scopeOf also returns the location a Location token is bound to.
func scopeOf(authorization string) (scope, location string) {
	token := authorization
	if len(token) > 7 && strings.EqualFold(token[:7], "bearer ") {
		token = token[7:]
	}
	token = strings.TrimSpace(token)
	if cl, ok := decodeClaims(token); ok && cl.AuthClass != "" && cl.AuthClassID != "" {
		scope = cl.AuthClass + ":" + cl.AuthClassID
		app := cl.OAuthMeta.Client
		if app == "" {
			app = cl.SourceID
		}
		if app != "" {
			scope += " app:" + app
		}
		if cl.AuthClass == "Location" {
			location = cl.AuthClassID
		}
		return scope, location
	}
	sum := sha256.Sum256([]byte(token))
	return "token:" + hex.EncodeToString(sum[:8]), ""
}

type claims struct {
	AuthClass   string `json:"authClass"`
	AuthClassID string `json:"authClassId"`
	SourceID    string `json:"sourceId"`
	OAuthMeta   struct {
		Client string `json:"client"`
	} `json:"oauthMeta"`
}

func decodeClaims(token string) (claims, bool) {
	var cl claims
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return cl, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return cl, false
	}
	return cl, json.Unmarshal(raw, &cl) == nil
}

// Token returns an unsigned JWT with GHL's claims, for tests and demos: class is
// "Location" or "Company", app the marketplace client id ("" for none). The stand-in
// accepts any bearer token; this one makes it derive the scope from claims.
func Token(class, id, app string) string {
	cl := map[string]any{"authClass": class, "authClassId": id}
	if app != "" {
		cl["oauthMeta"] = map[string]string{"client": app}
	}
	payload, _ := json.Marshal(cl)
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		enc.EncodeToString(payload) + "." + enc.EncodeToString([]byte("unsigned"))
}
