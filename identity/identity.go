// Package identity turns a request's Authorization header into what the sidecar may keep:
// a keyed hash of the credential (part of every cache and fold key), the GHL rate-limit
// scope the token is bound to, and a key to encrypt that credential's cached bodies. The raw
// token never leaves this package's return values except as the derived encryption key.
package identity

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync"
)

// Credential is what the sidecar knows about the caller of one request.
type Credential struct {
	// Hash is a keyed hash of the whole Authorization header, hex. Two requests share
	// cached and folded answers only when their Hash is equal.
	Hash string
	// Scope names the GHL resource the token spends budget on, e.g.
	// "Location:ve9EPM428h8vShlRW1KT app:64f8..." for an OAuth JWT, or "token:<hash>" for an
	// opaque token. Not secret, but may name a customer: log it, never label metrics with it.
	Scope string
	// ScopeKey is a short hash of Scope, safe for Redis keys and the stats endpoint.
	ScopeKey string
	// Class and ClassID are the JWT's authClass and authClassId when it had them.
	Class, ClassID string
	// EncKey encrypts this credential's cached bodies: derived from the token itself, so
	// only a caller holding the same token can read them, and a reader of Redis cannot.
	EncKey [32]byte
	// Anonymous is true when the request had no Authorization header.
	Anonymous bool
}

// Resolver derives Credentials. It remembers recent headers so that the hot path pays for
// the hashes once per credential, not once per request.
type Resolver struct {
	key  []byte
	mu   sync.RWMutex
	memo map[string]*Credential
}

// memoLimit bounds the memo; past it the memo is dropped whole, which is cheap and keeps
// memory flat under a flood of distinct tokens.
const memoLimit = 10000

// NewResolver returns a Resolver whose hashes are keyed with secret. Every replica sharing
// one Redis must use the same secret, or they will not share entries.
func NewResolver(secret string) *Resolver {
	k := sha256.Sum256([]byte("ghlproxy identity v1\x00" + secret))
	return &Resolver{key: k[:], memo: make(map[string]*Credential)}
}

// Resolve returns the Credential for an Authorization header value. The result is shared
// and must not be modified.
func (r *Resolver) Resolve(authorization string) *Credential {
	r.mu.RLock()
	c := r.memo[authorization]
	r.mu.RUnlock()
	if c != nil {
		return c
	}
	c = r.derive(authorization)
	r.mu.Lock()
	if len(r.memo) >= memoLimit {
		r.memo = make(map[string]*Credential)
	}
	r.memo[authorization] = c
	r.mu.Unlock()
	return c
}

func (r *Resolver) derive(authorization string) *Credential {
	c := &Credential{}
	if authorization == "" {
		c.Anonymous = true
	}
	m := hmac.New(sha256.New, r.key)
	m.Write([]byte(authorization))
	c.Hash = hex.EncodeToString(m.Sum(nil))

	token := bearerToken(authorization)
	if cl, ok := decodeClaims(token); ok && cl.AuthClass != "" && cl.AuthClassID != "" {
		c.Class, c.ClassID = cl.AuthClass, cl.AuthClassID
		c.Scope = cl.AuthClass + ":" + cl.AuthClassID
		if app := cl.app(); app != "" {
			c.Scope += " app:" + app
		}
	} else if c.Anonymous {
		c.Scope = "anonymous"
	} else {
		c.Scope = "token:" + c.Hash[:24]
	}
	sk := hmac.New(sha256.New, r.key)
	sk.Write([]byte("scope\x00" + c.Scope))
	c.ScopeKey = hex.EncodeToString(sk.Sum(nil))[:20]

	ek, _ := hkdf.Key(sha256.New, []byte(authorization), r.key, "ghlproxy cache body v1", 32)
	copy(c.EncKey[:], ek)
	return c
}

func bearerToken(authorization string) string {
	if len(authorization) > 7 && strings.EqualFold(authorization[:7], "bearer ") {
		return strings.TrimSpace(authorization[7:])
	}
	return strings.TrimSpace(authorization)
}

type claims struct {
	AuthClass   string `json:"authClass"`
	AuthClassID string `json:"authClassId"`
	SourceID    string `json:"sourceId"`
	OAuthMeta   struct {
		Client string `json:"client"`
	} `json:"oauthMeta"`
}

// app names the marketplace app the token belongs to: GHL counts limits per app per
// resource, so two apps on one location have separate budgets.
func (c claims) app() string {
	if c.OAuthMeta.Client != "" {
		return c.OAuthMeta.Client
	}
	return c.SourceID
}

// decodeClaims reads a JWT payload without verifying it. Verification is GHL's job; the
// sidecar only needs to know which budget the token spends, and a forged token gets a 401
// from GHL and a scope of its own here.
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
	if json.Unmarshal(raw, &cl) != nil {
		return cl, false
	}
	return cl, true
}
