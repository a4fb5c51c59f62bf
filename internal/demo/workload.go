package demo

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// kind is one thing a user of a GHL app does.
type kind int

const (
	// read: open a lead, GET /contacts/{id}, the hot ones far more often (Zipf).
	read kind = iota
	// search: a list view, POST /contacts/search with one of a few saved filters.
	search
	// burst: an automation saving field after field, three PUT /contacts/{id} to one lead
	// within 20 ms.
	burst
	// create: a lead form, POST /contacts/, whose answer is lost to a client timeout, so
	// the client sends the same create again.
	create
)

// op is one planned operation of one user.
type op struct {
	at      time.Duration // when the user starts it, from the start of the run
	kind    kind
	contact int // the lead read or updated (index into the seeded contacts)
	variant int // the search filter, or the number of the create
	noEmail bool
}

// mix is the share of each kind of operation: mostly reading hot leads, as in a CRM.
var mix = []struct {
	k kind
	w float64
}{{read, 0.72}, {search, 0.14}, {burst, 0.09}, {create, 0.05}}

// searches are the list views users open.
var searches = []string{
	`{"locationId":%q,"pageLimit":20,"filters":[{"field":"tags","operator":"contains","value":"hot"}]}`,
	`{"locationId":%q,"pageLimit":20,"filters":[{"field":"tags","operator":"contains","value":"warm"}]}`,
	`{"locationId":%q,"pageLimit":20,"query":"lead1"}`,
	`{"locationId":%q,"pageLimit":50}`,
}

// plan draws every user's operations for one run from seed: the same seed gives the same
// operations at the same times, so the direct run and the sidecar run do the same work.
func plan(seed uint64, users, contacts int, rate float64, d time.Duration) [][]op {
	out := make([][]op, users)
	perUser := rate / float64(users)
	creates := 0
	for u := range users {
		rng := rand.New(rand.NewPCG(seed, uint64(u)))
		zipf := rand.NewZipf(rng, 1.2, 2, uint64(contacts-1))
		// Users arrive spread over the first think time, not all at once.
		at := time.Duration(rng.Float64() / perUser * float64(time.Second))
		for at < d {
			o := op{at: at, kind: pick(rng.Float64()), contact: int(zipf.Uint64())}
			switch o.kind {
			case search:
				o.variant = rng.IntN(len(searches))
			case create:
				o.variant = u*1_000_000 + creates
				creates++
				// Some lead forms capture no email or phone: GHL cannot tell a retried
				// create of such a lead from a new one.
				o.noEmail = rng.IntN(2) == 0
			}
			out[u] = append(out[u], o)
			// Exponential think time: a Poisson stream of operations per user.
			at += time.Duration(-math.Log(1-rng.Float64()) / perUser * float64(time.Second))
		}
	}
	return out
}

func pick(x float64) kind {
	for _, m := range mix {
		if x < m.w {
			return m.k
		}
		x -= m.w
	}
	return read
}

// requests is the number of HTTP requests an operation makes.
func (o op) requests() int {
	switch o.kind {
	case burst:
		return 3
	case create:
		return 2
	}
	return 1
}

func searchBody(variant int, loc string) string { return fmt.Sprintf(searches[variant], loc) }
