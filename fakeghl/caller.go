package fakeghl

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
)

// caller is what the stand-in derives from one Authorization header, once per header.
type caller struct {
	forged   bool   // a JWT whose signature is not the stand-in's (Config.VerifyTokens)
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

// signingKey signs the stand-in's JWTs (SignedToken). A test key, and no secret.
var signingKey = []byte("fakeghl test signing key")

func signature(headerAndPayload string) string {
	m := hmac.New(sha256.New, signingKey)
	m.Write([]byte(headerAndPayload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// SignedToken is Token with a signature the stand-in verifies when Config.VerifyTokens is
// on; a token with the same claims and another signature is a forgery to it.
func SignedToken(class, id, app string) string { return Sign(Token(class, id, app)) }

// Sign gives a JWT the stand-in's signature in place of its own.
func Sign(token string) string {
	i := strings.LastIndexByte(token, '.')
	return token[:i+1] + signature(token[:i])
}

// forgedJWT says whether a bearer token is a JWT without the stand-in's signature.
func forgedJWT(authorization string) bool {
	token := authorization
	if len(token) > 7 && strings.EqualFold(token[:7], "bearer ") {
		token = token[7:]
	}
	token = strings.TrimSpace(token)
	i := strings.LastIndexByte(token, '.')
	if strings.Count(token, ".") != 2 {
		return false
	}
	return !hmac.Equal([]byte(token[i+1:]), []byte(signature(token[:i])))
}
