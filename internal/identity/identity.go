// Package identity turns a request's Authorization header into what the sidecar may keep:
// a keyed hash of the credential (part of every cache and fold key), the GHL rate-limit
// scope the token is bound to, and a key to encrypt that credential's cached bodies. The raw
// token never leaves this package's return values except as the derived encryption key.
package identity

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
)

// MaxAuthorizationBytes is the longest Authorization header the sidecar accepts; longer
// ones are refused before anything else happens (431 in GHL's shape). GHL's tokens are a
// few KiB at most; the bound keeps what a client can make the sidecar hold and hash small.
const MaxAuthorizationBytes = 16 << 10

// Credential is what the sidecar knows about the caller of one request. It is shared by
// every request of the credential: nothing of it may be modified but through its methods.
type Credential struct {
	// Hash is a keyed hash of the credential, hex: the token, however the Bearer scheme is
	// spelled or spaced (see Canonical). Two requests share cached and folded answers only
	// when their Hash is equal.
	Hash string
	// Scope names the GHL resource the token says it spends budget on, e.g.
	// "Location:ve9EPM428h8vShlRW1KT app:64f8..." for an OAuth JWT, or "token:<hash>" for an
	// opaque token. Not secret, but may name a customer: log it, never label metrics with it.
	Scope string
	// ScopeKey is a short keyed hash of Scope, safe for Redis keys and the stats endpoint.
	// Invalidation tags are scoped by it: a write answered 2xx through any credential of
	// the scope drops what it made wrong for all of them. Which budget a request spends is
	// LimitKey's.
	ScopeKey string
	// Class and ClassID are the JWT's authClass and authClassId when it had them.
	Class, ClassID string
	// EncKey encrypts this credential's cached bodies: derived from the token itself, so
	// only a caller holding the same token can read them, and a reader of Redis cannot.
	EncKey [32]byte
	// Anonymous is true when the request had no Authorization header.
	Anonymous bool

	// ownKey is the scope key of the token alone ("token:<hash>"); claimed says the JWT
	// named a resource, so ScopeKey and ownKey differ.
	ownKey  string
	claimed bool
	// verified: GHL has answered this token with a 2xx, so its claims are GHL's;
	// vouched is closed then, releasing every call waiting in Admit at once.
	verified atomic.Bool
	vouched  chan struct{}
	// probe admits one upstream call at a time while the claims are unverified; probes
	// counts the calls it admitted, for the claims' bucket to be charged (MarkVerified).
	probe  chan struct{}
	probes atomic.Int32
}

// LimitKey is the rate-limit scope key a request of this credential spends: its claims'
// ScopeKey once GHL has answered the token with a 2xx (MarkVerified), and until then the
// token's own. JWT claims are read unverified — the sidecar has no key to check their
// signature — so a token forged with another location's claims would otherwise spend that
// location's bucket; GHL answering it 2xx is the proof the claims are real.
func (c *Credential) LimitKey() string {
	if c.claimed && !c.verified.Load() {
		return c.ownKey
	}
	return c.ScopeKey
}

// Verified reports whether the credential's claims decide its budget (see LimitKey): true
// once GHL answered it 2xx, and for tokens without claims, whose scope is their own.
func (c *Credential) Verified() bool { return !c.claimed || c.verified.Load() }

// MarkVerified records that GHL answered a request of this credential with a 2xx. The
// first time, it returns how many upstream calls the credential made unverified, on its
// own budget (Admit): the caller charges them to the claims' bucket, whose window they
// were in; after that it returns 0.
func (c *Credential) MarkVerified() (unverifiedCalls int) {
	if !c.claimed || !c.verified.CompareAndSwap(false, true) {
		return 0
	}
	close(c.vouched)
	return int(c.probes.Load())
}

// Admit lets one upstream call of an unverified credential out at a time, so that a new
// token spends at most one call outside its claims' bucket before GHL has vouched for it;
// its other calls wait here, and the moment one is answered 2xx they all go, on the
// claims' bucket. Cache hits never come here. It returns a release to call as soon as the
// call's answer (its status) is in — calling it more than once is harmless — or ctx.Err().
// For a verified credential it returns at once.
//
// A token GHL never answers 2xx (every call a 4xx) stays on its own budget, one call at a
// time: such a token is failing anyway.
func (c *Credential) Admit(ctx context.Context) (release func(), err error) {
	if c.Verified() {
		return noRelease, nil
	}
	select {
	case c.probe <- struct{}{}:
	case <-c.vouched:
		return noRelease, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if c.Verified() { // the call before this one was answered 2xx
		<-c.probe
		return noRelease, nil
	}
	c.probes.Add(1)
	var once sync.Once
	return func() { once.Do(func() { <-c.probe }) }, nil
}

func noRelease() {}

// Resolver derives Credentials. It remembers recent ones so that the hot path pays for the
// hashes once per credential, not once per request.
type Resolver struct {
	key  []byte
	seed maphash.Seed

	mu sync.RWMutex
	// Two generations, each holding at most memoBytes of header bytes: when the current
	// one is full it becomes the old one, and a credential found there moves back. A
	// flood of distinct tokens costs at most 2 × memoBytes, and the tokens in use survive
	// it.
	cur, old memo
}

// memo maps a seeded hash of the Authorization header to its credentials; the header is
// kept with each, so that a collision of the hash can never hand out another caller's.
type memo struct {
	m     map[uint64][]memoEntry
	bytes int
}

type memoEntry struct {
	authorization string
	cred          *Credential
}

// memoBytes bounds each generation of the memo by the Authorization bytes it holds (plus a
// fixed cost per entry for the Credential).
const (
	memoBytes     = 4 << 20
	memoEntryCost = 512
)

func newMemo() memo { return memo{m: make(map[uint64][]memoEntry)} }

func (m *memo) get(h uint64, authorization string) *Credential {
	for _, e := range m.m[h] {
		if e.authorization == authorization {
			return e.cred
		}
	}
	return nil
}

func (m *memo) put(h uint64, authorization string, c *Credential) {
	m.m[h] = append(m.m[h], memoEntry{authorization, c})
	m.bytes += len(authorization) + memoEntryCost
}

// NewResolver returns a Resolver whose hashes are keyed with secret. Every replica sharing
// one Redis must use the same secret, or they will not share entries.
func NewResolver(secret string) *Resolver {
	k := sha256.Sum256([]byte("ghlproxy identity v1\x00" + secret))
	return &Resolver{key: k[:], seed: maphash.MakeSeed(), cur: newMemo(), old: newMemo()}
}

// Resolve returns the Credential for an Authorization header value (at most
// MaxAuthorizationBytes: the caller refuses longer ones). The result is shared.
func (r *Resolver) Resolve(authorization string) *Credential {
	h := maphash.String(r.seed, authorization)
	r.mu.RLock()
	c := r.cur.get(h, authorization)
	r.mu.RUnlock()
	if c != nil {
		return c
	}
	r.mu.RLock()
	c = r.old.get(h, authorization)
	r.mu.RUnlock()
	if c == nil {
		// Derived outside the lock: hashes of up to 16 KiB must not stall every other
		// request's lookup while a flood of new tokens arrives.
		c = r.derive(authorization)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if found := r.cur.get(h, authorization); found != nil {
		return found // another request put it first: one Credential per header
	}
	if r.cur.bytes+len(authorization)+memoEntryCost > memoBytes {
		r.old, r.cur = r.cur, newMemo()
	}
	r.cur.put(h, authorization, c)
	return c
}

// Canonical is the credential of an Authorization header: the Bearer scheme in one
// spelling ("Bearer", "bearer", "BEARER" and any spacing around the token all name the
// same token, as they do to GHL), other schemes as sent, trimmed.
func Canonical(authorization string) string {
	a := strings.TrimSpace(authorization)
	scheme, rest, ok := strings.Cut(a, " ")
	if !ok {
		scheme, rest, ok = strings.Cut(a, "\t")
	}
	if ok && strings.EqualFold(scheme, "bearer") {
		return "Bearer " + strings.TrimSpace(rest)
	}
	return a
}

func (r *Resolver) derive(authorization string) *Credential {
	c := &Credential{probe: make(chan struct{}, 1), vouched: make(chan struct{})}
	canon := Canonical(authorization)
	if canon == "" {
		c.Anonymous = true
	}
	m := hmac.New(sha256.New, r.key)
	m.Write([]byte(canon))
	c.Hash = hex.EncodeToString(m.Sum(nil))
	c.ownKey = r.scopeKey("token:" + c.Hash[:24])

	token := strings.TrimPrefix(canon, "Bearer ")
	if cl, ok := decodeClaims(token); ok && cl.AuthClass != "" && cl.AuthClassID != "" {
		c.Class, c.ClassID = cl.AuthClass, cl.AuthClassID
		c.Scope = cl.AuthClass + ":" + cl.AuthClassID
		if app := cl.app(); app != "" {
			c.Scope += " app:" + app
		}
		c.claimed = true
	} else if c.Anonymous {
		c.Scope = "anonymous"
	} else {
		c.Scope = "token:" + c.Hash[:24]
	}
	c.ScopeKey = r.scopeKey(c.Scope)

	ek, _ := hkdf.Key(sha256.New, []byte(canon), r.key, "ghlproxy cache body v1", 32)
	copy(c.EncKey[:], ek)
	return c
}

func (r *Resolver) scopeKey(scope string) string {
	sk := hmac.New(sha256.New, r.key)
	sk.Write([]byte("scope\x00" + scope))
	return hex.EncodeToString(sk.Sum(nil))[:20]
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

// decodeClaims reads a JWT payload without verifying it: the sidecar has no key for that.
// So the claims name the scope a token's writes invalidate (a forged token gets no 2xx from
// GHL, and only a 2xx invalidates), but its budget only once GHL has answered it 2xx
// (Credential.LimitKey).
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
